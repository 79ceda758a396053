"""The Linux node's side effects on mounts: ``mount``/``umount`` commands,
credentials files, mount-point directories and bounded health probes.

The platform (``node/linux/platform.py``) decides *what* to do from the mount
table; this class knows *how*, and never blocks past its bounds: ``umount``
is bounded and falls back to ``umount -l``; probes run in abandoned-able
threads (``node/linux/probes.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator, Mapping

from driver.credentials import Credentials
from driver.errors import Internal, InvalidArgument
from driver.log import get_logger
from node.linux import mountinfo
from node.linux.errors import MOUNT_ERROR, cifs_error, errno_name, nfs_mount_error, scrub
from node.linux.host import O_NOFOLLOW_CLOEXEC, FsStats, HostView, owned_by_us
from node.linux.options import MountSpec, credentials_text
from node.linux.probes import Prober, ProbesExhausted, ProbeTimeout
from node.runner import CommandResult, CommandRunner, CommandTimeout

log = get_logger("node.linux")

# Mounts stacked on one path that unstage/unpublish will peel off (each
# repair of a target leaves its dead mount below the new one).
MAX_STACKED = 32


class KernelMounter:
    """``mount``/``umount`` through a :class:`CommandRunner`, the mount table
    and statvfs through a :class:`HostView`."""

    def __init__(
        self,
        *,
        runner: CommandRunner,
        host: HostView,
        prober: Prober,
        secrets_dir: str,
        mount_timeout: float,
        unmount_timeout: float,
        probe_timeout: float,
    ) -> None:
        self.host = host
        self.probes = prober
        self.probe_timeout = probe_timeout
        self._runner = runner
        self._secrets_dir = secrets_dir
        self._mount_timeout = mount_timeout
        self._unmount_timeout = unmount_timeout

    # -- paths -----------------------------------------------------------

    @staticmethod
    def real(path: str) -> str:
        """Resolve symlinks in the parent only: the mount table shows real
        paths, and resolving the last component would stat a possibly dead
        mount."""
        parent, leaf = posixpath.split(path)
        return posixpath.join(os.path.realpath(parent), leaf)

    @staticmethod
    def prepare_dir(path: str, *, what: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.makedirs(path, mode=0o750, exist_ok=True)
            except OSError as exc:
                raise Internal(f"{what} {path}: cannot create it: {exc.strerror}") from None
            return
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{what} {path} exists and is not a directory")

    @staticmethod
    def remove_dir(path: str, *, what: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            log.warning("left alone: not a directory", path=path, what=what)
            return
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                # Data written below an unmounted path: never delete through.
                log.warning("left alone: directory is not empty", path=path, what=what)
                return
            raise Internal(f"{what} {path}: cannot remove it: {exc.strerror}") from None

    # -- probes ------------------------------------------------------------

    def probe_key(self, kind: str, path: str) -> str:
        """One probe in flight per path *and mount*: a probe stuck on a mount
        that was since detached (``umount -l``) and mounted again must not
        answer for the new mount at the same path (e.g. a re-stage that got a
        fresh SMB session while the old one still hangs)."""
        top = mountinfo.top(self.host.mounts(), path)
        return f"{kind}:{path}@{top.mount_id if top is not None else '-'}"

    async def statvfs(self, path: str) -> FsStats:
        return await self.probes.call(
            self.probe_key("statvfs", path),
            lambda: self.host.statvfs(path),
            self.probe_timeout,
        )

    async def look(self, path: str) -> None:
        await self.probes.call(
            self.probe_key("look", path),
            lambda: self.host.look(path),
            self.probe_timeout,
        )

    async def problem(self, path: str) -> str | None:
        """None when the mount at ``path`` answers a stat and a readdir of its
        root within the health bound; otherwise what is wrong."""
        try:
            await self.look(path)
        except ProbesExhausted as exc:
            # Other servers' dead mounts hold every probe slot: no evidence
            # against this mount, so do not tear it down.
            log.warning("cannot check the mount", path=path, reason=str(exc))
            return None
        except ProbeTimeout as exc:
            return f"stat/readdir: {exc} (server down or unreachable?)"
        except OSError as exc:
            return f"stat/readdir: {exc.strerror} ({errno_name(exc.errno)})"
        return None

    async def answers(self, spec: MountSpec) -> str | None:
        """None when the file server accepts a TCP connection within the
        health bound (it is back: a repair can mount); otherwise why not."""
        if not spec.server:
            return "no server address"
        try:
            await self.probes.call(
                f"connect:{spec.server}:{spec.port}",
                lambda: self.host.connect(spec.server, spec.port, self.probe_timeout),
                self.probe_timeout,
            )
        except ProbeTimeout as exc:
            return f"{spec.server} port {spec.port}: {exc}"
        except OSError as exc:
            return f"{spec.server} port {spec.port}: {exc.strerror or exc}"
        return None

    # -- commands ----------------------------------------------------------

    async def run(
        self,
        argv: list[str],
        *,
        timeout: float,  # noqa: ASYNC109 - passed to the runner, which kills the command
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        log.debug("running", argv=argv)
        return await self._runner.run(argv, timeout=timeout, env=env)

    async def unmount(self, path: str, *, what: str, broken: bool = False) -> None:
        """Unmount everything stacked on ``path``; never hangs for long.

        A top mount that answers gets a plain ``umount`` (bounded); a dead
        one, one whose ``umount`` fails or times out, and every layer below
        the top (dead mounts that repairs stacked over) are detached with
        ``umount -l``.  ``-c`` (no canonicalisation) keeps umount from
        stat()ing a dead mount; our paths are already canonical.  No ``-f``:
        NFS shares one superblock between mounts of the same export, and a
        forced unmount would abort other volumes' requests too.
        """
        for _ in range(MAX_STACKED):
            if mountinfo.top(self.host.mounts(), path) is None:
                return
            # ``broken``: the caller just found the top mount dead; don't wait
            # again.  Only the top layer is probed: a layer below another one
            # is a dead mount a repair stacked over, detached lazily.
            problem = "found broken" if broken else await self.problem(path)
            broken = True
            if problem is None:
                try:
                    result = await self.run(["umount", "-c", path], timeout=self._unmount_timeout)
                except CommandTimeout as exc:
                    # Not handed over: the lazy unmount below finishes the job.
                    log.warning("umount timed out; detaching lazily", path=path, error=exc.message)
                else:
                    if result.ok:
                        continue
                    log.warning(
                        "umount failed; detaching lazily",
                        path=path,
                        error=scrub(result.stderr, None),
                    )
            else:
                log.warning("mount is not healthy; detaching lazily", path=path, problem=problem)
            result = await self.run(
                ["umount", "-l", "-c", "-i", path], timeout=self._unmount_timeout
            )
            if not result.ok and mountinfo.top(self.host.mounts(), path) is not None:
                raise Internal(f"{what} {path}: umount -l failed: {scrub(result.stderr, None)}")
        if mountinfo.top(self.host.mounts(), path) is not None:
            raise Internal(f"{what} {path}: still mounted after {MAX_STACKED} unmounts")

    @contextlib.contextmanager
    def _credentials_file(self, creds: Credentials) -> Iterator[str]:
        """A 0600 file in a 0700 directory, removed when the block ends."""
        text = credentials_text(creds)
        directory = self._secrets_dir
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            st = os.lstat(directory)
            if not stat.S_ISDIR(st.st_mode) or not owned_by_us(st):
                raise Internal(f"{directory} is not a directory owned by the driver")
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(directory, 0o700)
            path = os.path.join(directory, f"cifs-{secrets.token_hex(8)}.cred")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW_CLOEXEC, 0o600)
        except OSError as exc:
            raise Internal(
                f"cannot write a credentials file in {directory}: {exc.strerror}"
            ) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def mount(
        self,
        spec: MountSpec,
        staging: str,
        creds: Credentials | None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: for the mount process only (``KRB5CCNAME`` for cifs.upcall)."""
        options = list(spec.options)
        argv_base = ["mount", "-t", spec.fstype, spec.device, staging]
        secret = creds.password if creds is not None else None
        with contextlib.ExitStack() as stack:
            if spec.protocol == "smb" and creds is not None:
                options.append(f"credentials={stack.enter_context(self._credentials_file(creds))}")
            argv = argv_base + (["-o", ",".join(options)] if options else [])
            log.info("mounting", device=spec.device, path=staging, options=options)
            result = await self.run(argv, timeout=self._mount_timeout, env=env)
        if result.ok:
            return
        message = (
            f"mount -t {spec.fstype} {spec.device} {staging} failed (exit {result.returncode}): "
            f"{scrub(result.stderr or result.stdout, secret)}"
        )
        if spec.protocol == "nfs":
            raise nfs_mount_error(result.stderr or result.stdout, message)
        found = MOUNT_ERROR.search(result.stderr)
        if found:
            raise cifs_error(int(found.group(1)), message)
        raise Internal(message)

    async def bind(self, source: str, target: str, *, read_only: bool) -> None:
        """``mount --bind source target`` (+ a read-only remount), on top of
        whatever ``target`` shows; never leaves a writable mount behind a
        read-only request."""
        result = await self.run(["mount", "--bind", source, target], timeout=self._mount_timeout)
        if not result.ok:
            raise Internal(
                f"bind mount of {source} at {target} failed: {scrub(result.stderr, None)}"
            )
        if read_only:
            result = await self.run(
                ["mount", "-o", "remount,bind,ro", target], timeout=self._mount_timeout
            )
            if not result.ok:
                # Only the new layer: a repair binds on top of a dead mount
                # that the container's copy still sits on.
                await self.run(["umount", "-l", "-c", "-i", target], timeout=self._unmount_timeout)
                raise Internal(
                    f"read-only remount of {target} failed: {scrub(result.stderr, None)}"
                )
