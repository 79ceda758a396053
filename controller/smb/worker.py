"""SMB steps in a worker process, beside the gRPC process.

Why: smbprotocol packs and parses every message in Python, about 0.8 ms of
CPU per mkdir (measured).  In the gRPC process that CPU shares one
interpreter lock with the grpc.aio event loop, which capped CreateVolume at
about half the raw client's rate at 64 in flight.  Here the same steps
(``controller.smb.steps``) run in one child process per pool, on the same
private connection per credential key (``controller.smb.connection.Connection``),
with the same bounded threads.  The gRPC process keeps the slots and the
timeouts (a ``Gate`` per channel), and only sends each step's name with its
arguments.

The wire is a socketpair.  Each message is a 4-byte length and a pickle of
plain values; both ends are this module, and the child gets the socket's
descriptor number as its only positional argument.  A step travels as its
registered name, never as a pickled function.  The password crosses that
socket once per channel and child.  It never goes into argv, the environment
or a log line.  The child maps every failure to a ``DriverError`` with the
password scrubbed (``Connection.scrub``) before it sends it back; pickling
drops the exception chain.

If the child dies, steps in flight fail UNAVAILABLE, and the next step
starts a new child (files that were open die with the old one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from controller.smb.channel import Gate
from controller.smb.connection import Connection, CredentialKey, Secret, SmbSettings
from controller.smb.errors import detach
from controller.smb.kerberos import KerberosLogon
from controller.smb.steps import STEPS, Step
from driver import log as driver_log
from driver.errors import DriverError, Internal, Unavailable

if TYPE_CHECKING:
    from controller.smb.channel import Channel

__all__ = ["ProcessChannel", "SmbWorker", "main"]

T = TypeVar("T")
log = driver_log.get_logger(__name__)
_HEADER = struct.Struct(">I")
# The child says it is ready (imports done) before it serves.  Its start-up is
# bounded by this, apart from the steps' own timeout: a cold interpreter on a
# loaded node must not make the first step look like a hung server.
_READY = "ready"
_START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class _HandleRef:
    """An open file, which lives in the child; the parent holds its number."""

    number: int


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


# --- the parent side ------------------------------------------------------------


class SmbWorker:
    """A ``ChannelMaker``: starts the child on first use, and again after it died."""

    def __init__(self, *, log_format: str = "json", verbosity: int = 2) -> None:
        self._argv = ["--log-format", log_format, "-v", str(verbosity)]
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._opened: set[int] = set()  # channels the current child knows
        self._ids = itertools.count(1)
        self._start = asyncio.Lock()
        self._reading: asyncio.Task[None] | None = None

    def channel(
        self,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        kerberos: KerberosLogon | None = None,
    ) -> Channel:
        return ProcessChannel(self, next(self._ids), key, password, settings, kerberos=kerberos)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._writer is not None else None

    async def _writer_ready(self) -> asyncio.StreamWriter:
        async with self._start:
            if self._writer is None:
                ours, theirs = socket.socketpair()
                try:
                    self._proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "controller.smb.worker",
                        str(theirs.fileno()),
                        *self._argv,
                        pass_fds=(theirs.fileno(),),
                        stdin=subprocess.DEVNULL,
                    )
                finally:
                    theirs.close()
                reader, writer = await asyncio.open_connection(sock=ours)
                await self._await_ready(reader, writer)
                self._writer = writer
                self._opened = set()
                self._reading = asyncio.create_task(self._read(reader, self._writer))
            return self._writer

    async def ready(self) -> None:
        """Start the child if none runs, and wait until it serves."""
        await self._writer_ready()

    async def _await_ready(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                hello = pickle.loads(await reader.readexactly(size))  # noqa: S301 - our child
            if hello != (0, True, _READY):
                msg = f"unexpected first message {hello!r}"
                raise ValueError(msg)  # noqa: TRY301 - one cleanup path below
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            writer.close()
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()
            msg = f"the SMB worker process did not start: {type(exc).__name__}"
            raise Unavailable(msg) from None

    async def submit(
        self, channel: ProcessChannel, request: tuple[Any, ...], *, open_args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        writer = await self._writer_ready()
        frames = b""
        if channel.number not in self._opened:
            frames += _frame(("open", 0, channel.number, *open_args))
            self._opened.add(channel.number)
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        writer.write(frames + _frame(("call", number, channel.number, *request)))
        await writer.drain()
        return future

    async def forget(self, channel: ProcessChannel) -> None:
        """Log the channel's connection off in the child (bounded there)."""
        if self._writer is None or channel.number not in self._opened:
            return
        self._opened.discard(channel.number)
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        self._writer.write(_frame(("close", number, channel.number)))
        with contextlib.suppress(Exception):  # the child may be gone: so is the connection
            await asyncio.wait_for(future, channel.settings.close_timeout + 5)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                number, ok, value = pickle.loads(await reader.readexactly(size))  # noqa: S301 - our child
                future = self._pending.pop(number, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("unreadable reply from the SMB worker process")
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
        finally:
            if self._writer is writer:
                self._writer = None
                log.warning("the SMB worker process exited; the next SMB step starts a new one")
            writer.close()
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(Unavailable("the SMB worker process exited"))

    async def aclose(self) -> None:
        """End the child: it logs every connection off (bounded) and exits."""
        writer, proc = self._writer, self._proc
        self._writer = None
        if writer is not None:
            writer.close()  # EOF: the child closes its connections and exits
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class ProcessChannel:
    """A ``Channel`` whose steps run in the worker process.

    It wraps a :class:`Gate` (slots, timeout, the retry rule) exactly as the
    in-process channel does; the connection cache and the threads are the
    child's.
    """

    def __init__(
        self,
        worker: SmbWorker,
        number: int,
        key: CredentialKey,
        password: str,
        settings: SmbSettings,
        *,
        kerberos: KerberosLogon | None = None,
    ) -> None:
        self._worker = worker
        self.number = number
        self._key = key
        self._settings = settings
        self._password = Secret(password)
        self._kerberos = kerberos
        self._gate = Gate(settings, self._scrub)

    def __repr__(self) -> str:
        return f"ProcessChannel({self._key.username}@{self._key.server}:{self._key.port})"

    @property
    def key(self) -> CredentialKey:
        return self._key

    @property
    def settings(self) -> SmbSettings:
        return self._settings

    def _scrub(self, exc: BaseException, op: str, path: str) -> DriverError:
        secret = self._password.reveal()
        if self._kerberos is not None:
            secret = self._kerberos.secret_texts()[0]
        return detach(exc, op, path, secret)

    async def run(
        self, op: str, path: str, share_unc: str, step: Step[T], *args: Any, retry: bool = True
    ) -> T:
        await self._worker.ready()  # the child's start is not the step's time

        async def start() -> asyncio.Future[T]:
            return await self._worker.submit(
                self,
                (op, path, share_unc, step.name, args, retry),
                open_args=(self._key, self._password.reveal(), self._settings, self._kerberos),
            )

        return await self._gate.run(op, path, start)

    async def aclose(self) -> None:
        await self._worker.forget(self)


# --- the child side ---------------------------------------------------------------


def _step_named(op: str, path: str, name: str) -> Step[Any]:
    step = STEPS.get(name)
    if step is None:
        msg = f"SMB {op} {path!r}: the worker process knows no step {name!r}"
        raise Internal(msg)
    return step


class _Child:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._connections: dict[int, Connection] = {}
        self._handles: dict[int, Any] = {}
        self._handle_ids = itertools.count(1)

    def serve(self) -> None:
        stream: BinaryIO = self._sock.makefile("rb")
        self._send((0, True, _READY))
        try:
            while header := stream.read(_HEADER.size):
                (size,) = _HEADER.unpack(header)
                message = pickle.loads(stream.read(size))  # noqa: S301 - our parent
                kind, number, channel_number, *rest = message
                if kind == "open":
                    key, password, settings, kerberos = rest
                    self._connections[channel_number] = Connection(
                        key, password, settings, kerberos
                    )
                elif kind == "call":
                    self._call(number, self._connections[channel_number], *rest)
                elif kind == "close":
                    threading.Thread(
                        target=self._close, args=(number, channel_number), daemon=True
                    ).start()
        finally:
            # The parent is gone (or asked us to end): log off, bounded, then leave
            # without joining threads that may hang on a hung server.
            for connection in list(self._connections.values()):
                connection.close()
            logging.shutdown()
            os._exit(0)

    def _call(  # noqa: PLR0917 - one call message, unpacked
        self,
        number: int,
        connection: Connection,
        op: str,
        path: str,
        share_unc: str,
        step_name: str,
        args: tuple[Any, ...],
        retry: bool,
    ) -> None:
        try:
            step = _step_named(op, path, step_name)
            args = self._resolve(op, path, step, args)
            future = connection.start(share_unc, step, args, retry=retry)
        except Exception as exc:  # noqa: BLE001 - every failure goes back, mapped and scrubbed
            self._send((number, False, connection.scrub(exc, op, path)))
            return

        def reply(done: Future[Any]) -> None:
            if done.cancelled():  # the connection was closed before the step began
                msg = f"SMB {op} {path!r}: the connection was closed"
                self._send((number, False, Unavailable(msg)))
                return
            exc = done.exception()
            if exc is not None:
                self._send((number, False, connection.scrub(exc, op, path)))
                return
            result = done.result()
            if step.handle == "opens":
                ref = _HandleRef(next(self._handle_ids))
                self._handles[ref.number] = result
                result = ref
            self._send((number, True, result))

        future.add_done_callback(reply)

    def _resolve(
        self, op: str, path: str, step: Step[Any], args: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        """``args`` with each ``_HandleRef`` replaced by the open file it names."""
        out = []
        for arg in args:
            if isinstance(arg, _HandleRef):
                # A close forgets the file even if it fails: the file is done.
                take = self._handles.pop if step.handle == "closes" else self._handles.get
                found = take(arg.number)
                if found is None:
                    msg = (
                        f"SMB {op} {path!r}: the open file was lost with an earlier worker process"
                    )
                    raise Unavailable(msg)
                arg = found  # noqa: PLW2901 - the replacement is the point
            out.append(arg)
        return tuple(out)

    def _close(self, number: int, channel_number: int) -> None:
        connection = self._connections.pop(channel_number, None)
        if connection is not None:
            connection.close()
        self._send((number, True, None))

    def _send(self, reply: tuple[int, bool, Any]) -> None:
        data = _frame(reply)
        with self._send_lock:
            self._sock.sendall(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m controller.smb.worker")
    parser.add_argument("fd", type=int, help="this end of the socketpair")
    parser.add_argument("--log-format", default="json", choices=("json", "text"))
    parser.add_argument("-v", dest="verbosity", type=int, default=2)
    args = parser.parse_args(argv)
    driver_log.configure(args.log_format, args.verbosity)
    _Child(socket.socket(fileno=args.fd)).serve()


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: the classes that
    # cross the socket must pickle as controller.smb.worker.*.
    from controller.smb.worker import main as imported_main

    imported_main()
