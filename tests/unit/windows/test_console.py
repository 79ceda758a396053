"""Windows console control events stop the driver like SIGTERM does.

hcsshim stops a HostProcess container with CTRL_SHUTDOWN_EVENT and ends the
job 5 s later; the process also ends as soon as the handler returns.  The
Win32 registration is injected: these tests hold the handler Windows would
call and call it from a thread of their own, as Windows does.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from driver import console
from driver.config import Config
from driver.console import (
    CTRL_BREAK_EVENT,
    CTRL_C_EVENT,
    CTRL_CLOSE_EVENT,
    CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
    ConsoleStop,
)
from tests.harness import wait_until
from tests.unit.windows.fake import CONFIG


class Registry:
    """What SetConsoleCtrlHandler keeps: the registered handlers."""

    def __init__(self) -> None:
        self.handlers: list[console.Handler] = []
        self.removed: list[console.Handler] = []

    def register(self, handler: console.Handler) -> Callable[[], None]:
        self.handlers.append(handler)

        def remove() -> None:
            self.handlers.remove(handler)
            self.removed.append(handler)

        return remove


class WatchedDrain:
    """The event that says the drain is done, telling when a handler waits on it."""

    def __init__(self, inner: threading.Event) -> None:
        self.inner = inner
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return self.inner.wait(timeout)


def test_handled_events_request_a_stop_and_logoff_is_passed_on() -> None:
    stops: list[str] = []
    stopped = threading.Event()
    stopped.set()  # nothing to wait for here
    handler = ConsoleStop(lambda: stops.append("stop"), stopped, wait=30)
    assert handler(CTRL_LOGOFF_EVENT) is False  # the next handler decides; no stop
    assert stops == []
    for event in (CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_SHUTDOWN_EVENT):
        assert handler(event) is True
    assert stops == ["stop"] * 4
    assert handler.events == [0, 1, 2, 6]


@pytest.mark.parametrize("event", [CTRL_SHUTDOWN_EVENT, CTRL_CLOSE_EVENT])
async def test_an_ending_event_is_held_until_the_drain_is_done(event: int) -> None:
    stopped = threading.Event()
    requested = threading.Event()
    drain = WatchedDrain(stopped)
    handler = ConsoleStop(requested.set, drain, wait=60)  # type: ignore[arg-type]
    answer = asyncio.ensure_future(asyncio.to_thread(handler, event))
    await wait_until(requested.is_set)
    await wait_until(drain.waiting.is_set)
    assert not answer.done()  # Windows would end the process on return
    stopped.set()
    assert await answer is True


async def test_ctrl_c_returns_at_once() -> None:
    stopped = threading.Event()  # never set
    handler = ConsoleStop(lambda: None, stopped, wait=60)
    assert await asyncio.wait_for(asyncio.to_thread(handler, CTRL_C_EVENT), 30) is True


def test_an_ending_event_is_held_no_longer_than_its_bound() -> None:
    handler = ConsoleStop(lambda: None, threading.Event(), wait=0.01)
    assert handler(CTRL_SHUTDOWN_EVENT) is True  # returns although the drain never ended


async def test_serve_drains_on_ctrl_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole sequence: CTRL_SHUTDOWN on Windows' thread → the loop stops
    the server, in-flight work finishes, and only then the handler returns."""
    import driver.server as server_module

    events: list[str] = []
    in_flight = asyncio.Event()

    class StubServer:
        def __init__(self, config: Config, plugins: Any) -> None:
            pass

        async def start(self) -> None:
            events.append("start")

        async def stop(self) -> None:
            events.append("drain")
            await in_flight.wait()  # an in-flight NodeStage finishing
            events.append("stopped")

    drains: list[WatchedDrain] = []

    def watched_console_stop(
        request_stop: Callable[[], None], stopped: threading.Event, wait: float
    ) -> ConsoleStop:
        drains.append(WatchedDrain(stopped))
        return ConsoleStop(request_stop, drains[-1], wait)  # type: ignore[arg-type]

    monkeypatch.setattr(server_module, "DriverServer", StubServer)
    monkeypatch.setattr(console, "ConsoleStop", watched_console_stop)
    registry = Registry()
    serving = asyncio.ensure_future(
        server_module.serve(CONFIG, [], console_registrar=registry.register)
    )
    await wait_until(lambda: events == ["start"])
    (handler,) = registry.handlers
    answer = asyncio.ensure_future(asyncio.to_thread(handler, CTRL_SHUTDOWN_EVENT))
    await wait_until(lambda: events == ["start", "drain"])
    (drain,) = drains
    await wait_until(drain.waiting.is_set)  # the handler waits for the drain's end
    assert not answer.done()  # still draining: the process must not end yet
    in_flight.set()
    assert await asyncio.wait_for(answer, 30) is True
    await asyncio.wait_for(serving, 30)
    assert events == ["start", "drain", "stopped"]
    assert registry.handlers == []  # unregistered on the way out
    assert registry.removed == [handler]


def test_serve_registers_the_real_handler_only_on_windows() -> None:
    import driver.server as server_module

    real = getattr(console, "set_console_ctrl_handler", None)
    assert (real is not None) == (sys.platform == "win32")
    assert console.default_registrar is real
    assert server_module.serve.__kwdefaults__ == {"console_registrar": real}
