"""A user-space Samba server on loopback, for integration tests and ``make run``.

Needs root (``useradd``, and ``smbd`` switches to the connecting user) and the
Debian ``samba`` package (``apt-get install -y --no-install-recommends samba``).
Every state path of the instance lives under ``root_dir``, so any number of
instances can run side by side and nothing under ``/var/lib/samba`` or
``/etc/samba`` is touched.  System users (``useradd -M``) are shared by all
instances and left in place; each instance has its own password database.

Read-only semantics: ``store dos attributes = no`` and ``map readonly = yes``,
so the DOS read-only attribute *is* the owner's write bit.  A file that was
``chmod 0444``-ed on the server and a file given ``FILE_ATTRIBUTE_READONLY``
over SMB are the same thing, and Samba refuses to delete either
(``STATUS_CANNOT_DELETE``) until the attribute is cleared.

A command line for one instance: ``python -m tests.servers.samba_cli``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tests.servers.host import find_program, free_port, port_open, unread_bytes

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

APT_HINT = "apt-get install -y --no-install-recommends samba"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def _register_secret(value: str) -> None:
    """Tell the test run's secret scan about a password (no-op outside tests)."""
    try:
        from tests.secret_scan import register_secret
    except ImportError:  # pragma: no cover - used from `make run` without tests
        return
    register_secret(value)


class SambaError(RuntimeError):
    """The testbed could not do what was asked (message names the fix)."""


class SambaNotInstalledError(SambaError):
    def __init__(self, program: str) -> None:
        super().__init__(f"{program} not found: install Samba with `{APT_HINT}`")


@dataclass(frozen=True, slots=True)
class Share:
    """One ``[name]`` section.

    ``read_list`` users get read-only access even though the share is
    writable; ``valid_users`` (empty: everybody with an account) limits who may
    connect at all.
    """

    name: str
    read_only: bool = False
    read_list: tuple[str, ...] = ()
    valid_users: tuple[str, ...] = ()


def _which(program: str) -> str:
    found = find_program(program)
    if found is None:
        raise SambaNotInstalledError(program)
    return found


def ensure_system_user(name: str) -> None:
    """``useradd -M -s /usr/sbin/nologin name`` unless it exists (race-safe)."""
    useradd = _which("useradd")
    for _ in range(50):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return
        done = subprocess.run(
            [useradd, "-M", "-s", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode in (0, 9):  # 9: already exists (another instance won)
            return
        if done.returncode != 10:  # 10: /etc/passwd is locked by a concurrent useradd
            msg = f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}"
            raise SambaError(msg)
        time.sleep(0.05)
    msg = f"useradd {name}: /etc/passwd stayed locked"
    raise SambaError(msg)


class SambaServer:
    """One smbd on ``host:port`` serving directories under ``root_dir/shares``.

    ``users`` maps user name to password; the default is one user ``csitest1``
    with a random password.  ``shares`` defaults to one writable share ``csi``.
    Passwords are handed to ``smbpasswd`` on stdin and kept out of ``repr``.
    """

    def __init__(
        self,
        root_dir: Path,
        port: int = 0,
        users: Mapping[str, str] | None = None,
        shares: Iterable[Share] | None = None,
        *,
        host: str = "127.0.0.1",
        options: Mapping[str, str] | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            msg = f"SambaServer listens on loopback only, not {host!r}"
            raise ValueError(msg)
        self.root_dir = Path(root_dir).absolute()
        self._host = host
        self._requested_port = port
        self._port = port
        self._users = dict(users) if users is not None else {"csitest1": secrets.token_urlsafe(18)}
        for password in self._users.values():
            _register_secret(password)
        self.shares = tuple(shares) if shares is not None else (Share("csi"),)
        self._options = dict(options or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._passdb_ready = False
        self._log_file: int | None = None
        for share in self.shares:
            for user in (*share.read_list, *share.valid_users):
                if user not in self._users:
                    msg = f"share {share.name!r} names unknown user {user!r}"
                    raise ValueError(msg)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"SambaServer({self._host}:{self._port}, root={self.root_dir}, "
            f"users={sorted(self._users)}, shares={[s.name for s in self.shares]}, {state})"
        )

    # --- facts ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if not self._port:
            msg = "port is chosen by start()"
            raise SambaError(msg)
        return self._port

    @property
    def users(self) -> Mapping[str, str]:
        """User name → password (do not log it)."""
        return dict(self._users)

    def password(self, user: str) -> str:
        return self._users[user]

    @property
    def state_dir(self) -> Path:
        return self.root_dir / "state"

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "smb.conf"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "log" / "smbd.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def unread_bytes(self) -> int:
        """Bytes of requests that reached smbd and wait, unread (paused)."""
        return unread_bytes(self._port)

    def share_path(self, name: str = "csi") -> Path:
        """Local directory backing share ``name``."""
        if name not in {s.name for s in self.shares}:
            msg = f"no share {name!r}"
            raise KeyError(msg)
        return self.root_dir / "shares" / name

    def sessions(self) -> list[dict[str, str]]:
        """SMB sessions the server has now (``smbstatus``): user name and client address."""
        done = subprocess.run(
            [_which("smbstatus"), "-s", str(self.conf_path), "-b", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        sessions = json.loads(done.stdout).get("sessions", {})
        return [
            {"username": str(v.get("username", "")), "client": str(v.get("hostname", ""))}
            for v in sessions.values()
        ]

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        if os.geteuid() != 0:
            msg = "SambaServer needs root (useradd, and smbd switches to the connecting user)"
            raise SambaError(msg)
        smbd = _which("smbd")
        if not self._port:
            self._port = free_port(self._host)
        self._prepare()
        if not self._passdb_ready:
            self._create_users()
            self._passdb_ready = True
        self._spawn(smbd)

    def stop(self) -> None:
        """SIGTERM, wait for smbd (and the children it reaps) to exit."""
        proc = self._proc
        if proc is None:
            return
        if self._paused:
            self.resume()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait()
        # Children that outlived the parent (samba-dcerpcd, a busy client worker).
        self._signal_group(signal.SIGKILL)
        self._proc = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL every process of the instance, as a crash would."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGKILL)
        proc.wait()
        self._paused = False
        self._proc = None
        self._close_log()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP all smbd processes: connections stay open, nothing answers."""
        self._require_running()
        self._signal_group(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._require_running()
        self._signal_group(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def cleanup(self) -> None:
        """Stop and remove the instance state (config, passdb, logs); share data stays."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._passdb_ready = False

    # --- internals -----------------------------------------------------------

    def _require_running(self) -> None:
        if not self.running:
            msg = "smbd is not running"
            raise SambaError(msg)

    def _signal_group(self, sig: signal.Signals) -> None:
        # smbd runs in its own session (pgid == its pid); its children inherit the group.
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            os.close(self._log_file)
            self._log_file = None

    def _dirs(self) -> dict[str, Path]:
        s = self.state_dir
        return {
            "private dir": s / "private",
            "state directory": s / "state",
            "cache directory": s / "cache",
            "lock directory": s / "lock",
            "pid directory": s / "pid",
            "ncalrpc dir": s / "ncalrpc",
            "binddns dir": s / "bind-dns",
            "usershare path": s / "usershares",
            "log": s / "log",
        }

    def _prepare(self) -> None:
        for path in self._dirs().values():
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self._dirs()["private dir"], 0o700)
        for share in self.shares:
            path = self.share_path(share.name)
            path.mkdir(parents=True, exist_ok=True)
            # Every testbed user may write at the top; below, smbd's masks decide.
            os.chmod(path, 0o777)  # noqa: S103 - testbed share root, loopback only
            os.chmod(path.parent, 0o755)  # noqa: S103 - smbd users must traverse it
        os.chmod(self.root_dir, 0o755)  # noqa: S103 - smbd users must traverse it
        for parent in self.root_dir.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                msg = (
                    f"{parent} is not traversable by other users (mode "
                    f"{stat.S_IMODE(parent.stat().st_mode):o}), so smbd cannot reach the shares "
                    f"as the connecting user: put the root_dir elsewhere (e.g. under /tmp)"
                )
                raise SambaError(msg)
        self.conf_path.write_text(self._render_conf(), encoding="utf-8")

    def _render_conf(self) -> str:
        d = self._dirs()
        listen = "::1" if self._host == "::1" else "127.0.0.1"
        glob: dict[str, str] = {
            "server role": "standalone server",
            "workgroup": "WORKGROUP",
            "netbios name": "CSITESTSMB",
            "smb ports": str(self._port),
            "interfaces": listen,
            "bind interfaces only": "yes",
            "disable netbios": "yes",
            "private dir": str(d["private dir"]),
            "state directory": str(d["state directory"]),
            "cache directory": str(d["cache directory"]),
            "lock directory": str(d["lock directory"]),
            "pid directory": str(d["pid directory"]),
            "ncalrpc dir": str(d["ncalrpc dir"]),
            "binddns dir": str(d["binddns dir"]),
            "usershare path": str(d["usershare path"]),
            "passdb backend": f"tdbsam:{d['private dir'] / 'passdb.tdb'}",
            "log file": str(self.log_path),
            "max log size": "10000",
            "log level": "1",
            "load printers": "no",
            "printcap name": "/dev/null",
            "disable spoolss": "yes",
            "map to guest": "never",
            "obey pam restrictions": "no",
            "unix password sync": "no",
            "server min protocol": "SMB2_10",
            # DOS read-only == owner write bit; enforced by smbd and the kernel.
            "store dos attributes": "no",
            "map readonly": "yes",
            "map archive": "no",
            "create mask": "0666",
            "directory mask": "0777",
        }
        glob.update(self._options)
        lines = ["[global]", *(f"    {k} = {v}" for k, v in glob.items())]
        for share in self.shares:
            lines += [
                "",
                f"[{share.name}]",
                f"    path = {self.share_path(share.name)}",
                f"    read only = {'yes' if share.read_only else 'no'}",
                "    browseable = yes",
            ]
            if share.read_list:
                lines.append(f"    read list = {' '.join(share.read_list)}")
            if share.valid_users:
                lines.append(f"    valid users = {' '.join(share.valid_users)}")
        return "\n".join(lines) + "\n"

    def _create_users(self) -> None:
        smbpasswd = _which("smbpasswd")
        for user in self._users:
            ensure_system_user(user)
        for user, password in self._users.items():
            if "\n" in password or not password:
                msg = f"password of {user!r} must be non-empty and single-line"
                raise ValueError(msg)
            # The password goes on stdin, never on the command line.
            done = subprocess.run(
                [smbpasswd, "-c", str(self.conf_path), "-s", "-a", user],
                input=f"{password}\n{password}\n",
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                msg = f"smbpasswd -a {user} failed ({done.returncode}): {done.stderr.strip()}"
                raise SambaError(msg)

    def _spawn(self, smbd: str) -> None:
        self._log_file = os.open(
            self.state_dir / "log" / "smbd.stdout", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        # A new session: smbd signals its whole process group when it stops, and
        # pause()/kill() reach every smbd process of this instance through it.
        self._proc = subprocess.Popen(
            [smbd, "--foreground", "--no-process-group", "-s", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._close_log()
                msg = f"smbd exited with {code} during start; log tail:\n{self._log_tail()}"
                raise SambaError(msg)
            if port_open(self._host, self._port):
                return
            if time.monotonic() > deadline:
                self.kill()
                msg = (
                    f"smbd did not listen on {self._host}:{self._port} within "
                    f"{_START_TIMEOUT}s:\n{self._log_tail()}"
                )
                raise SambaError(msg)
            time.sleep(0.005)

    def _log_tail(self, lines: int = 20) -> str:
        out: list[str] = []
        for path in (self.state_dir / "log" / "smbd.stdout", self.log_path):
            with contextlib.suppress(OSError):
                out += path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join(out)
