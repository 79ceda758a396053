"""Run a command inside a user-mode-Linux (UML) guest with real kernel cifs/nfs.

The guest boots the host's own root filesystem read-only (hostfs), so the
project venv and sources are visible at the same paths. See README.md here
and /work/shared/notes/testbed.md.

    from tests.e2e.uml.guest import run_in_guest
    res = run_in_guest(
        [".venv/bin/python", "-m", "pytest", "tests/e2e/inside", "-x"],
        workdir=tmp_path,            # host dir, becomes read-write in the guest
        samba=True, nfs=True, env={"FOO": "bar"}, timeout=300)
    assert res.returncode == 0, res.output[-4000:]

Inside the guest:
  * the command runs as root in ``cwd`` (default: the repo root), stdin
    /dev/null, stdout/stderr on the console (collected in ``res.output``);
  * writable: /tmp /run (tmpfs); /etc /var /usr/lib /root and the repo
    (tmpfs overlays: writes are discarded at poweroff); ``workdir`` is the
    only directory whose writes reach the host;
  * env: ``env`` plus PATH (venv bin first), HOME, PYTHONDONTWRITEBYTECODE=1,
    E2E_WORKDIR, and when samba/nfs are requested the server settings
    SMB_SERVER SMB_SHARE SMB_USER SMB_PASSWORD SMB_SHARE_DIR /
    NFS_SERVER NFS_EXPORT_DIR NFS_V3_ROOT NFS_V4_ROOT (override via ``env``);
  * tests/e2e/uml/{start,stop}-{samba,nfs}.sh stop/restart the servers.

CLI: ``python -m tests.e2e.uml.guest [--samba] [--nfs] [--addc] [--timeout S] -- CMD...``
exits with the guest command's code (124 on timeout, 125 if the guest broke).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SETUP_SH = HERE / "setup.sh"
INIT_SH = HERE / "guest-init.sh"
PROVISION_ADDC_SH = HERE / "provision-addc.sh"

# Exit codes reported when the guest command produced none.
RC_TIMEOUT = 124
RC_GUEST_BROKEN = 125


def uml_dir() -> Path:
    return Path(os.environ.get("UML_DIR", REPO / ".cache" / "uml"))


def kernel_path() -> Path:
    return uml_dir() / "root" / "usr" / "bin" / "linux.uml"


class GuestSetupError(RuntimeError):
    """The UML testbed is not installed and could not be set up."""


def is_ready() -> bool:
    ready = uml_dir() / ".ready"
    return kernel_path().exists() and ready.exists()


def ensure_setup(*, run_setup: bool = True) -> Path:
    """Return the kernel path, running setup.sh first if needed."""
    if is_ready():
        return kernel_path()
    cmd = ["bash", str(SETUP_SH)]
    if not run_setup:
        raise GuestSetupError(f"UML testbed missing; run: {shlex.join(cmd)}")
    proc = subprocess.run(
        cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.returncode != 0 or not is_ready():
        raise GuestSetupError(
            f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
        )
    return kernel_path()


@dataclass
class GuestResult:
    returncode: int  # the guest command's exit code (124 timeout, 125 guest broke)
    output: str  # console text: guest command stdout+stderr and E2E-GUEST lines
    duration: float  # seconds, boot to host-side exit
    timed_out: bool = False
    got_exit_code: bool = True  # False: the guest wrote no exit code
    peak_mem_kib: int | None = None  # peak summed PSS of the UML host processes

    @property
    def stdout(self) -> str:
        return self.output


def ensure_addc() -> Path:
    """The Samba AD domain for Kerberos tests, provisioned on the host once
    (provision-addc.sh; ~25 s the first time, then instant)."""
    cmd = ["bash", str(PROVISION_ADDC_SH)]
    proc = subprocess.run(
        cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    found = re.search(r"^ADDC_DIR=(.+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not found:
        raise GuestSetupError(
            f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
        )
    return Path(found.group(1))


# ---------------------------------------------------------------- processes


def _proc_table() -> dict[int, tuple[int, int, bool]]:
    """pid -> (ppid, session id, is zombie) for every host process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after "(comm)": state ppid pgrp session ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0] == b"Z")
    return table


def _uml_pids(root: int, sids: set[int]) -> list[int]:
    """Live host processes of the UML run started as ``root``: its
    descendants plus every process in their sessions (UML calls setsid;
    orphans of a killed UML leave the tree but keep the session). ``sids``
    collects the sessions seen so far (the tree is gone once root is reaped)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    sids |= {table[p][1] for p in tree} | {root}
    members = tree | {p for p, (_, sid, _) in table.items() if sid in sids}
    # zombies are dead already (reaped by proc.wait() or the host's init)
    return sorted(p for p in members if not table[p][2])


def _kill_tree(root: int, sids: set[int], deadline: float = 10.0) -> None:
    """SIGKILL every UML process until none is left."""
    end = time.monotonic() + deadline
    while True:
        pids = _uml_pids(root, sids)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > end:
            raise RuntimeError(f"UML processes survive SIGKILL: {pids}")
        time.sleep(0.05)


def _pss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
    return total


def _run_uml(
    argv: list[str],
    host_env: dict[str, str],
    console_path: Path,
    timeout: float,
    echo: Callable[[str], None] | None,
) -> tuple[bool, int, str, int]:
    """Run UML in its own session; -> (timed out, UML exit status, console, peak PSS KiB)."""
    chunks: list[str] = []
    peak = [0]
    sids: set[int] = set()  # host sessions of UML processes (UML calls setsid)
    done = threading.Event()
    with open(console_path, "w", encoding="utf-8", errors="replace") as console:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=host_env,
            cwd="/",
            start_new_session=True,
        )
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()

        def reader() -> None:
            while True:
                try:
                    data = os.read(out_fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                text = data.decode("utf-8", errors="replace").replace("\r", "")
                chunks.append(text)
                console.write(text)
                console.flush()
                if echo is not None:
                    echo(text)

        def sampler() -> None:
            while not done.wait(0.5):
                peak[0] = max(peak[0], _pss_kib(_uml_pids(proc.pid, sids)))

        threads = [
            threading.Thread(target=reader, daemon=True),
            threading.Thread(target=sampler, daemon=True),
        ]
        for t in threads:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Always sweep, also after a normal exit or ^C: no UML host
            # process may survive us.
            done.set()
            _kill_tree(proc.pid, sids)
            proc.wait()
            threads[0].join(timeout=10)
            proc.stdout.close()
    return timed_out, proc.returncode, "".join(chunks), peak[0]


# ---------------------------------------------------------------- main API


def _check_path(p: Path, what: str) -> None:
    # kernel command line and hostfs mount options cannot carry these
    if re.search(r"[\s,\"']", str(p)):
        raise ValueError(f"{what} {p!s} must not contain whitespace, commas or quotes")


def _env_file_text(env: dict[str, str]) -> str:
    lines = []
    for k, v in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"bad environment variable name {k!r}")
        lines.append(f"{k}={shlex.quote(str(v))}\n")
    return "".join(lines)


def default_env(*, samba: bool, nfs: bool) -> dict[str, str]:
    venv_bin = REPO / ".venv" / "bin"
    env = {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if samba:
        env.update(
            SMB_SERVER="127.0.0.1",
            SMB_SHARE="share",
            SMB_SHARE_DIR="/srv/smb",
            SMB_USER="e2e",
            SMB_PASSWORD=secrets.token_urlsafe(12),
        )
    if nfs:
        env.update(
            NFS_SERVER="127.0.0.1",
            NFS_EXPORT_DIR="/srv/nfs",
            NFS_V3_ROOT="/srv/nfs",  # v3 path of the export root
            NFS_V4_ROOT="/",  # v4 path of the export root (fsid=0)
        )
    return env


def run_in_guest(
    command: list[str] | str,
    *,
    env: dict[str, str] | None = None,
    workdir: Path,
    timeout: float = 600,
    samba: bool = False,
    nfs: bool = False,
    addc: bool = False,
    mem: str = "1G",
    cwd: Path | str = REPO,
    overlays: Sequence[Path | str] = (REPO,),
    echo: Callable[[str], None] | None = None,
    setup: bool = True,
) -> GuestResult:
    """Boot a UML guest, run ``command`` inside, return its exit code and console.

    ``command``: argv list (exec'd) or a bash script text. ``workdir``: a host
    directory (created if missing) mounted read-write in the guest at the same
    path; it receives cmd.sh, env (mode 0600), exitcode and console.log.
    ``overlays``: extra read-only dirs made writable (tmpfs, discarded).
    ``echo``: called with console text as it arrives (e.g. ``sys.stdout.write``);
    default: echo when E2E_GUEST_ECHO=1. ``setup``: run setup.sh if needed.
    ``addc``: start the Samba AD DC (start-addc.sh; it needs port 445, so
    not together with ``samba``); ADDC_DIR in the guest is its domain.
    """
    kernel = ensure_setup(run_setup=setup)
    if addc and samba:
        raise ValueError("addc and samba both need port 445: boot a guest for each")
    addc_dir = ensure_addc() if addc else None
    for sh in HERE.glob("*.sh"):
        if not os.access(sh, os.X_OK):  # the guest kernel execs init directly
            raise GuestSetupError(f"{sh} is not executable (chmod +x; git mode 100755)")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _check_path(workdir, "workdir")
    _check_path(uml_dir(), "UML_DIR")
    for o in overlays:
        _check_path(Path(o), "overlay")
        if ":" in str(o):
            raise ValueError(f"overlay {o!s} must not contain ':'")
    if echo is None and os.environ.get("E2E_GUEST_ECHO") == "1":

        def echo(s: str) -> None:
            sys.stderr.write(s)
            sys.stderr.flush()

    for name in ("exitcode", "exitcode.tmp", "console.log"):
        (workdir / name).unlink(missing_ok=True)
    script = shlex.join(command) if not isinstance(command, str) else command
    if not isinstance(command, str):
        script = "exec " + script
    (workdir / "cmd.sh").write_text(f"# generated by tests/e2e/uml/guest.py\n{script}\n")

    full_env = default_env(samba=samba, nfs=nfs)
    full_env.update(env or {})
    full_env.update(
        E2E_WORKDIR=str(workdir),
        E2E_CWD=str(cwd),
        START_SAMBA="1" if samba else "0",
        START_NFS="1" if nfs else "0",
        START_ADDC="1" if addc else "0",
    )
    if addc_dir is not None:
        full_env.setdefault("ADDC_DIR", str(addc_dir))
    env_path = workdir / "env"
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(_env_file_text(full_env))

    argv = [
        str(kernel),
        f"mem={mem}",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "ro",
        "quiet",
        "con=null",
        "con0=null,fd:1",
        f"init={INIT_SH}",
        f"E2E_WORKDIR={workdir}",
        f"E2E_UMLDIR={uml_dir()}",
        f"E2E_OVERLAYS={':'.join(str(o) for o in overlays)}",
    ]
    # If we die without cleaning up (SIGKILL, CI timeout), nothing may
    # survive: as root, UML runs as PID 1 of its own PID namespace (killing
    # it kills every UML process), and setpriv's parent-death signal takes
    # unshare, hence (--kill-child) UML, down with the calling thread.
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        argv[:0] = [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
        ]
    # UML keeps a pid file and its mconsole socket under uml_dir (default
    # $HOME/.uml): use a short private dir (socket paths max 108 bytes).
    # It puts its RAM in an unlinked file under TMPDIR (or /dev/shm).
    umldir = tempfile.mkdtemp(prefix="uml-")
    argv.insert(argv.index(str(kernel)) + 1, f"uml_dir={umldir}")
    host_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": umldir}
    if "TMPDIR" in os.environ:
        host_env["TMPDIR"] = os.environ["TMPDIR"]

    start = time.monotonic()
    try:
        timed_out, uml_rc, output, peak = _run_uml(
            argv, host_env, workdir / "console.log", timeout, echo
        )
    finally:
        shutil.rmtree(umldir, ignore_errors=True)
    duration = time.monotonic() - start

    rc_file = workdir / "exitcode"
    got = False
    if timed_out:
        rc = RC_TIMEOUT
        output += f"\nE2E-HOST: guest timed out after {timeout:.0f} s and was killed\n"
    elif rc_file.exists():
        rc = int(rc_file.read_text().strip())
        got = True
    else:
        rc = RC_GUEST_BROKEN
        output += f"\nE2E-HOST: guest wrote no exit code (UML exit status {uml_rc})\n"
    return GuestResult(rc, output, duration, timed_out, got, peak or None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.e2e.uml.guest",
        description="Run CMD inside the UML e2e guest; exit with its exit code.",
    )
    ap.add_argument("--samba", action="store_true", help="start Samba in the guest")
    ap.add_argument("--nfs", action="store_true", help="start the kernel NFS server")
    ap.add_argument("--addc", action="store_true", help="start the Samba AD DC (Kerberos)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--workdir", type=Path, help="default: a fresh temp dir, removed after")
    ap.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given (use: -- CMD...)")
    env = dict(kv.split("=", 1) for kv in a.env)

    def echo(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    def go(wd: Path) -> GuestResult:
        return run_in_guest(
            cmd,
            env=env,
            workdir=wd,
            timeout=a.timeout,
            samba=a.samba,
            nfs=a.nfs,
            addc=a.addc,
            mem=a.mem,
            echo=echo,
        )

    if a.workdir:
        res = go(a.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="uml-guest-") as d:
            res = go(Path(d))
    print(
        f"E2E-HOST: exit {res.returncode} after {res.duration:.1f} s"
        + (f", peak {res.peak_mem_kib // 1024} MiB" if res.peak_mem_kib else ""),
        file=sys.stderr,
    )
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
