"""The built image (``make image``) as a root filesystem the tests can run.

``podman run`` cannot start containers on these machines (crun cannot set
cgroups or rlimits), so the tests do what a runtime does, by hand: mount the
image's filesystem (``podman image mount``), put a private writable layer on
it (overlayfs, so nothing a test does changes the stored image), give it
/proc, /dev, tmpfs /tmp and /run, and start the image's ENTRYPOINT there
with ``chroot`` as the image's USER and with the image's ENV only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.harness import stop_process
from tests.secret_scan import watch_log_file

ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


IMAGE = os.environ.get("IMAGE", f"csi-driver-smb-nfs:{project_version()}")
# As deploy/build-image.sh: the configured storage driver unless forced.
STORAGE = (
    ["--storage-driver", os.environ["IMAGE_STORAGE_DRIVER"]]
    if os.environ.get("IMAGE_STORAGE_DRIVER")
    else []
)


class ImageMissing(RuntimeError):
    """The image is not in local storage: run ``make image``."""


def engine() -> list[str]:
    for program in ("podman", "buildah"):
        if shutil.which(program):
            return [program, *STORAGE]
    raise ImageMissing("neither podman nor buildah is installed: make deps, then make image")


def _run(argv: Sequence[str]) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class ImageConfig:
    """What a container runtime takes from the image."""

    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    size: int

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.user.partition(":")
        return int(uid), int(gid or uid)

    @property
    def stand_in_base(self) -> bool:
        return self.labels.get("io.csi-driver-smb-nfs.stand-in") == "true"


def inspect(image: str = IMAGE) -> ImageConfig:
    proc = subprocess.run(
        [*engine(), "inspect", "--type", "image", image],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageMissing(f"image {image} is not built: run `make image` ({proc.stderr.strip()})")
    data: dict[str, Any] = json.loads(proc.stdout)[0]
    config = data.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        user=config.get("User", ""),
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        env=env,
        labels=dict(config.get("Labels") or {}),
        size=int(data.get("Size", 0)),
    )


@contextmanager
def image_mount(image: str = IMAGE) -> Iterator[Path]:
    """The image's root filesystem as a directory (read it, do not write it)."""
    inspect(image)
    podman = ["podman", *STORAGE]
    path = Path(_run([*podman, "image", "mount", image]).strip())
    try:
        yield path
    finally:
        with suppress(RuntimeError):
            _run([*podman, "image", "unmount", image])


def _mount(*args: str) -> None:
    _run(["mount", *args])


@contextmanager
def writable_rootfs(lower: Path, scratch: Path) -> Iterator[Path]:
    """``lower`` under a throw-away overlay, with /proc, /dev, /tmp and /run."""
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "root"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    _mount("-t", "overlay", "image-rootfs", "-o",
           f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged))  # fmt: skip
    try:
        _mount("-t", "proc", "proc", str(merged / "proc"))
        _mount("--rbind", "/dev", str(merged / "dev"))
        _mount("--make-rslave", str(merged / "dev"))
        _mount("-t", "tmpfs", "-o", "mode=1777", "tmp", str(merged / "tmp"))
        _mount("-t", "tmpfs", "-o", "mode=755", "run", str(merged / "run"))
        yield merged
    finally:
        subprocess.run(["umount", "-R", "-l", str(merged)], check=False, capture_output=True)


def bind(source: Path, root: Path, inside: str) -> Path:
    """Bind ``source`` at ``inside`` (an absolute path in the image)."""
    target = root / inside.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(target))
    return target


def command(
    root: Path, config: ImageConfig, args: Sequence[str], *, as_image_user: bool = True
) -> list[str]:
    """argv that runs the image's ENTRYPOINT + ``args`` in ``root``, as the
    image's USER (setpriv from the image's own util-linux) or as root."""
    argv = ["chroot", str(root)]
    if as_image_user:
        uid, gid = config.uid_gid
        argv += ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return argv + config.entrypoint + list(args)


def image_env(config: ImageConfig, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a runtime gives the container: the image's ENV only."""
    env = {"HOME": "/nonexistent", **config.env}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra or {})
    return env


def process_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a running process."""
    uid = gid = -1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and its descendants (the controller's SMB worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, ()))
        with suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


@dataclass
class Served:
    """The image's ``serve``, started as a runtime would."""

    pid: int
    socket: Path
    log: Path
    ready_seconds: float  # from exec to the first successful Probe


@contextmanager
def serve_from_image(
    root: Path,
    config: ImageConfig,
    scratch: Path,
    *,
    mode: str,
    as_image_user: bool = True,
    args: Sequence[str] = (),
) -> Iterator[Served]:
    """``csi-smb-nfs serve --mode MODE`` from the image's ENTRYPOINT, with its
    socket on a host directory bound at /csi (the pod's socket volume)."""
    sockets = scratch / f"csi-{mode}"
    sockets.mkdir()
    if as_image_user:
        os.chown(sockets, *config.uid_gid)
    bind(sockets, root, "/csi")
    log = watch_log_file(scratch / f"{mode}.log")
    argv = command(
        root,
        config,
        ["serve", f"--mode={mode}", "--endpoint=unix:///csi/csi.sock", *args],
        as_image_user=as_image_user,
    )
    with log.open("w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=image_env(config))
    socket = sockets / "csi.sock"
    try:
        ready = _wait_probe(socket, proc, start)
        yield Served(proc.pid, socket, log, ready)
    finally:
        stop_process(proc)
        subprocess.run(["umount", "-l", str(root / "csi")], check=False, capture_output=True)


def _wait_probe(socket: Path, proc: subprocess.Popen[bytes], start: float) -> float:
    deadline = start + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the image's driver exited with {proc.returncode}")
        if socket.exists():
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                try:
                    resp = csi_pb2_grpc.IdentityStub(channel).Probe(
                        csi_pb2.ProbeRequest(), timeout=2
                    )
                    if not resp.HasField("ready") or resp.ready.value:
                        return time.monotonic() - start
                except grpc.RpcError:
                    pass
        time.sleep(0.005)
    raise RuntimeError("the image's driver never answered Probe")
