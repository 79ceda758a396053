"""Running system commands (``mount``, ``umount``) from asyncio.

Argument lists only, never a shell.  Secrets never go through here as
arguments: a caller passes them in a 0600 file (or ``stdin``/``env``), so
``argv`` is always safe to log.

A command that outlives its timeout is killed with SIGKILL, together with its
whole process group (``mount`` runs ``mount.cifs``/``mount.nfs`` as a child,
and that child is the one inside the ``mount(2)`` system call).  A process
stuck in the kernel (D state, e.g. a mount waiting for a dead server) may not
die at once; the :class:`CommandTimeout` error then carries ``finished``, an
awaitable that completes when no process of the group is left.  The node
service hands it to :meth:`driver.locks.VolumeLock.release_after`, so the
volume's lock stays held until the mount attempt has really ended and kubelet
retries cannot pile mounts up.  A cancelled call (the gRPC client gave up)
kills the group the same way and attaches ``finished`` to the
``CancelledError`` it re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from driver.errors import DeadlineExceeded, Internal
from driver.log import get_logger

log = get_logger("node.runner")

# How long a killed process group gets to disappear before the caller is
# answered with the still-running ``finished`` awaitable instead.
KILL_GRACE = 1.0
# Poll interval bounds while waiting for a killed group to disappear.
_POLL_MIN = 0.05
_POLL_MAX = 2.0
# Output kept from a command (error texts quote the end of stderr).
_OUTPUT_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandTimeout(DeadlineExceeded):
    """A command did not finish in time and was killed.

    ``finished`` is None when the process group is already gone; otherwise an
    awaitable that completes when it is (possibly never, for a process stuck
    in the kernel).  Whoever holds a lock for the command's work should keep
    it until then (``VolumeLock.release_after(finished)``).
    """

    def __init__(self, message: str, *, finished: Awaitable[object] | None) -> None:
        super().__init__(message)
        self.finished = finished


class CommandRunner(Protocol):
    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,  # noqa: ASYNC109 - the command's deadline: it is killed, not just awaited
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``argv`` (no shell); CommandTimeout after ``timeout`` seconds.

        A non-zero exit status is a result, not an error: the caller knows
        what it means for its command.
        """
        ...


if sys.platform == "win32":  # type-checked only: the Linux node never runs there

    def _group_alive(pgid: int) -> bool:
        return False

    def _kill_group(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

else:
    import signal

    def _group_alive(pgid: int) -> bool:
        """True while a process (other than a zombie) of group ``pgid`` exists."""
        try:
            entries = os.listdir("/proc")
        except OSError:
            return False
        for name in entries:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may contain spaces and ')'.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False

    def _kill_group(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _tail(data: bytes) -> str:
    return data[-_OUTPUT_MAX:].decode("utf-8", errors="replace")


class AsyncioRunner:
    """The real runner: ``asyncio.create_subprocess_exec`` in a new session.

    ``LC_ALL=C`` keeps tool messages in English (they end up in RPC errors).
    """

    def __init__(self, *, kill_grace: float = KILL_GRACE) -> None:
        self._kill_grace = kill_grace
        # Waits for killed groups; referenced so they are not collected.
        self._reapers: set[asyncio.Task[None]] = set()

    @property
    def stuck(self) -> int:
        """Killed commands whose processes have not ended yet."""
        return sum(1 for t in self._reapers if not t.done())

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,  # noqa: ASYNC109 - the command's deadline: it is killed, not just awaited
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        args = tuple(argv)
        if not args:
            raise Internal("empty command")
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            raise Internal(f"cannot run {args[0]}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            finished = self._kill(proc)
            done, _ = await asyncio.wait({finished}, timeout=self._kill_grace)
            still = not done
            log.warning(
                "command timed out and was killed",
                argv=list(args),
                timeout=timeout,
                still_running=still,
            )
            raise CommandTimeout(
                f"{args[0]} did not finish within {timeout:g} s and was killed"
                + ("; it has not exited yet (stuck in the kernel?)" if still else ""),
                finished=finished if still else None,
            ) from None
        except asyncio.CancelledError as exc:
            exc.finished = self._kill(proc)  # type: ignore[attr-defined]
            raise
        except BaseException:
            self._kill(proc)
            raise
        # communicate() waited for the exit, so returncode is set.
        code = proc.returncode if proc.returncode is not None else -1
        return CommandResult(args, code, _tail(out), _tail(err))

    def _kill(self, proc: asyncio.subprocess.Process) -> asyncio.Task[None]:
        """SIGKILL the group; return a task that ends when the group is gone."""
        _kill_group(proc)

        async def gone() -> None:
            await proc.wait()
            delay = _POLL_MIN
            while _group_alive(proc.pid):
                _kill_group(proc)  # members may have been stopped, not killed yet
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)

        task = asyncio.get_running_loop().create_task(gone(), name=f"reap {proc.pid}")
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
        return task
