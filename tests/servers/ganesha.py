"""A user-space NFS server (nfs-ganesha, FSAL VFS) for integration tests.

Needs root and the Debian packages of :data:`APT_HINT`.  Every state path of
an instance (config, log, pid file, v4 recovery dir) lives under
``root_dir/state``; the exported directory is ``root_dir/export``
(:attr:`GaneshaServer.export_path`), so a test can look at what appeared on
disk.  Squash is off (``No_Root_Squash``): the client works as root.

Two shapes:

* ``versions=("4",)`` -- NFSv4 only, on ``127.0.0.1:<port>`` in the host's
  network namespace; no rpcbind.  ``port=0`` picks a free port.
* ``versions=("3", "4")`` -- NFSv3 needs rpcbind (portmapper on port 111 and
  ``/run/rpcbind.sock``).  To clash with nothing on the host, rpcbind and
  ganesha run in a private network + mount namespace (``unshare -m -n``,
  tmpfs on ``/run``, only ``lo``, brought up).  rpcbind is the namespace's
  holder process; ganesha is started into it with ``nsenter`` and can be
  killed and restarted without losing the namespace.  Inside, ganesha listens
  on the standard ports (NFS 2049, MOUNT 20048): the namespace is private.

How a client reaches the v3 server: a network namespace is a per-thread
attribute and a socket stays in the namespace it was created in.
:meth:`GaneshaServer.client_netns` moves the *calling thread* into the
server's network namespace (``setns(2)`` through ctypes) and back on exit.
pytest-asyncio runs the event loop on the main thread, so a test that runs
inside ``with server.client_netns():`` (a fixture) makes every socket the
client opens -- libnfs' portmapper, MOUNT and NFS connections included --
talk to the namespace's loopback.  Nothing else is needed: no subprocess for
the client and no named ``ip netns``.  Only the network namespace is entered,
so the client still sees the host's files (``export_path`` included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tests.servers.host import enter_netns, find_program, free_port, port_open, unread_bytes

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

APT_HINT = "apt-get install -y --no-install-recommends nfs-ganesha nfs-ganesha-vfs rpcbind"
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_FSAL_VFS_GLOBS = ("/usr/lib/*/ganesha/libfsalvfs.so", "/usr/lib/ganesha/libfsalvfs.so")
#: Ports inside the private namespace (v3 shape).
NS_NFS_PORT = 2049
NS_MOUNT_PORT = 20048


class GaneshaError(RuntimeError):
    """The testbed could not do what was asked (message names the fix)."""


class GaneshaNotInstalledError(GaneshaError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found: install it with `{APT_HINT}`")


def _which(program: str) -> str:
    found = find_program(program)
    if found is None:
        raise GaneshaNotInstalledError(program)
    return found


def _check_fsal_vfs() -> None:
    if not any(Path("/").glob(g.lstrip("/")) for g in _FSAL_VFS_GLOBS):
        raise GaneshaNotInstalledError("ganesha FSAL VFS (libfsalvfs.so)")


class GaneshaServer:
    """One ganesha.nfsd exporting ``root_dir/export``.

    Attributes for clients: :attr:`host`, :attr:`port` (NFS port, also for
    v3), :attr:`pseudo_path` (the v4 path, ``/<export_name>``),
    :attr:`export` (the v3 export path: the backing directory itself),
    :attr:`export_path` (the backing directory as a Path), :attr:`netns_path`
    (v3 shape only) and :meth:`client_netns`.
    """

    def __init__(
        self,
        root_dir: Path,
        port: int = 0,
        versions: Iterable[str] = ("4",),
        *,
        export_name: str = "csi",
        grace_seconds: int | None = None,
        read_only_export: bool = False,
    ) -> None:
        # None: graceless (ready at once).  A number: a real NFSv4 grace
        # period of that many seconds after every start, as after a reboot.
        self.grace_seconds = grace_seconds
        self.versions = tuple(sorted(set(versions)))
        if not set(self.versions) <= {"3", "4"} or not self.versions:
            msg = f"versions must be a non-empty subset of ('3', '4'), not {versions!r}"
            raise ValueError(msg)
        self.root_dir = Path(root_dir).absolute()
        self.export_path = self.root_dir / "export"
        self.state_dir = self.root_dir / "state"
        self.host = "127.0.0.1"
        self.namespaced = "3" in self.versions
        if self.namespaced:
            self.port = port or NS_NFS_PORT
            self.mount_port: int | None = NS_MOUNT_PORT
        else:
            self.port = port or free_port(self.host)
            self.mount_port = None
        self.pseudo_path = f"/{export_name}"
        self.export = str(self.export_path)
        # A second export, Access_Type = RO: every change is refused (EROFS).
        self.read_only_export = read_only_export
        self.ro_export_path = self.root_dir / "export-ro"
        self.ro_pseudo_path = f"/{export_name}-ro"
        self._proc: subprocess.Popen[bytes] | None = None
        self._holder: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.last_start_seconds = 0.0

    def __repr__(self) -> str:
        return f"GaneshaServer(v{'+'.join(self.versions)} {self.host}:{self.port} {self.export})"

    # -- paths ------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "ganesha.conf"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "ganesha.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def netns_path(self) -> str | None:
        """``/proc/<rpcbind pid>/ns/net`` of the private namespace (v3 shape)."""
        if self._holder is None:
            return None
        return f"/proc/{self._holder.pid}/ns/net"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def unread_bytes(self) -> int:
        """Bytes of requests that reached the server and wait, unread (paused)."""
        return unread_bytes(self.port, self.netns_path)

    # -- config -----------------------------------------------------------

    def _config(self) -> str:
        protocols = ", ".join(self.versions)
        core = [
            f"NFS_Port = {self.port};",
            f"Protocols = {protocols};",
            "Enable_NLM = false;",
            "Enable_RQUOTA = false;",
            "Enable_UDP = false;",
        ]
        if self.namespaced:
            core.append(f"MNT_Port = {self.mount_port};")  # only lo exists in there
        else:
            core.insert(0, f"Bind_Addr = {self.host};")
        recovery = self.state_dir / "recovery"
        return "\n".join(
            [
                "NFS_CORE_PARAM {",
                *(f"    {line}" for line in core),
                "}",
                "NFSv4 {",
                *(
                    ["    Graceless = true;"]
                    if self.grace_seconds is None
                    else [
                        "    Graceless = false;",
                        f"    Grace_Period = {self.grace_seconds};",
                        f"    Lease_Lifetime = {max(1, self.grace_seconds // 2)};",
                    ]
                ),
                "    RecoveryBackend = fs;",
                f'    RecoveryRoot = "{recovery}";',
                "}",
                "EXPORT {",
                "    Export_Id = 1;",
                f'    Path = "{self.export_path}";',
                f'    Pseudo = "{self.pseudo_path}";',
                f"    Protocols = {protocols};",
                "    Transports = TCP;",
                "    Access_Type = RW;",
                "    Squash = No_Root_Squash;",
                "    SecType = sys;",
                "    FSAL { Name = VFS; }",
                "}",
                *(
                    [
                        "EXPORT {",
                        "    Export_Id = 2;",
                        f'    Path = "{self.ro_export_path}";',
                        f'    Pseudo = "{self.ro_pseudo_path}";',
                        f"    Protocols = {protocols};",
                        "    Transports = TCP;",
                        "    Access_Type = RO;",
                        "    Squash = No_Root_Squash;",
                        "    SecType = sys;",
                        "    FSAL { Name = VFS; }",
                        "}",
                    ]
                    if self.read_only_export
                    else []
                ),
                "",
            ]
        )

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Start ganesha (and the namespace for v3) and wait until it serves."""
        if self.running:
            return
        ganesha = _which("ganesha.nfsd")
        _check_fsal_vfs()
        self.export_path.mkdir(parents=True, exist_ok=True)
        if self.read_only_export:
            self.ro_export_path.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "recovery").mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self._config())
        begun = time.monotonic()
        argv = [
            ganesha,
            "-F",
            "-f",
            str(self.conf_path),
            "-L",
            str(self.log_path),
            "-p",
            str(self.state_dir / "ganesha.pid"),
        ]
        if self.namespaced:
            self._ensure_namespace()
            assert self._holder is not None
            argv = [_which("nsenter"), "-t", str(self._holder.pid), "-m", "-n", *argv]
        self.log_path.unlink(missing_ok=True)
        with (self.state_dir / "ganesha.out").open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        ports = [self.port] + ([self.mount_port] if self.mount_port else [])
        self._wait_ready(ports, begun)
        self.last_start_seconds = time.monotonic() - begun

    def _ensure_namespace(self) -> None:
        if self._holder is not None and self._holder.poll() is None:
            return
        rpcbind, ip = _which("rpcbind"), _which("ip")
        script = (
            "set -e; mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -p /run/rpcbind; "
            f"{ip} link set lo up; exec {rpcbind} -f -w"
        )
        self._holder = subprocess.Popen(
            [_which("unshare"), "-m", "-n", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        ns_path = self.netns_path
        assert ns_path is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._holder_ready(ns_path):
            if self._holder.poll() is not None:
                err = self._holder.stderr.read().decode() if self._holder.stderr else ""
                self._holder = None
                msg = f"namespace with rpcbind failed to start: {err.strip()}"
                raise GaneshaError(msg)
            if time.monotonic() > deadline:
                self._stop_holder()
                msg = "rpcbind did not listen on port 111 in its namespace"
                raise GaneshaError(msg)
            time.sleep(0.02)

    def _holder_ready(self, ns_path: str) -> bool:
        # The namespace exists only once unshare ran; then rpcbind listens.
        try:
            if os.readlink(ns_path) == os.readlink("/proc/self/ns/net"):
                return False
        except OSError:
            return False
        return port_open("127.0.0.1", 111, ns_path)

    def _wait_ready(self, ports: list[int], begun: float) -> None:
        deadline = begun + _START_TIMEOUT
        ns_path = self.netns_path if self.namespaced else None
        pending = list(ports)
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                self._proc = None
                msg = f"ganesha.nfsd exited during start-up:\n{self.log_tail()}"
                raise GaneshaError(msg)
            pending = [p for p in pending if not port_open(self.host, p, ns_path)]
            if not pending and "NFS SERVER INITIALIZED" in self._log_text():
                return
            if time.monotonic() > deadline:
                self.kill()
                msg = f"ganesha.nfsd not ready after {_START_TIMEOUT:g} s:\n{self.log_tail()}"
                raise GaneshaError(msg)
            time.sleep(0.02)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the ganesha log, without the harmless dbus noise."""
        text = [ln for ln in self._log_text().splitlines() if ":DBUS :" not in ln]
        return "\n".join(text[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def stop(self) -> None:
        """Stop ganesha gracefully (SIGTERM, then SIGKILL); keeps the namespace."""
        proc = self._proc
        if proc is None:
            return
        if self._paused:
            self.resume()
        self._signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            proc.wait(_STOP_TIMEOUT)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL ganesha (a crash): clients see their connections reset."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        proc.wait(_STOP_TIMEOUT)
        self._proc = None
        self._paused = False

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and namespace."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered.  Returns once
        every thread of ganesha is stopped (the signal is asynchronous)."""
        self._signal(signal.SIGSTOP)
        self._paused = True
        if self._proc is None:
            return
        deadline = time.monotonic() + _STOP_TIMEOUT
        while not self._all_threads_stopped(self._proc.pid):
            if time.monotonic() > deadline:
                msg = "ganesha.nfsd did not stop on SIGSTOP"
                raise GaneshaError(msg)
            time.sleep(0.005)

    @staticmethod
    def _all_threads_stopped(pid: int) -> bool:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return True  # gone
        for tid in tasks:
            try:
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except FileNotFoundError:
                continue
            # "pid (comm) S ..." -- comm may hold spaces: split after ")".
            if text.rpartition(")")[2].split()[0] not in ("T", "t"):
                return False
        return True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._paused = False

    def _stop_holder(self) -> None:
        holder, self._holder = self._holder, None
        if holder is None:
            return
        if holder.poll() is None:
            holder.terminate()
            try:
                holder.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait(_STOP_TIMEOUT)
        if holder.stderr is not None:
            holder.stderr.close()

    def close(self) -> None:
        """Stop ganesha and tear the namespace down (exported data stays)."""
        try:
            self.stop()
        finally:
            self._stop_holder()

    @contextlib.contextmanager
    def client_netns(self) -> Iterator[None]:
        """Run the calling thread where clients reach this server: the
        private namespace for the v3 shape, nowhere special for v4 only."""
        ns_path = self.netns_path
        if ns_path is None:
            yield
            return
        with enter_netns(ns_path):
            yield

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
