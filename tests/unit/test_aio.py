"""driver.aio: one piece of work per key, bounded waits, late results forgotten."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from driver.aio import SingleFlight, forget_late_result, in_daemon_thread


async def test_callers_of_one_key_share_one_piece_of_work() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    started: list[str] = []

    async def work() -> int:
        started.append("x")
        await gate.wait()
        return 7

    first = asyncio.ensure_future(flights.run("k", work))
    second = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)  # let both callers reach the flight
    assert flights.busy("k")
    assert len(flights) == 1
    gate.set()
    assert await asyncio.gather(first, second) == [7, 7]
    assert started == ["x"]
    assert not flights.busy("k")


async def test_a_bounded_wait_leaves_the_work_running_then_forgets_it() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        raise OSError("late failure")

    with pytest.raises(TimeoutError):
        await flights.run("k", work, timeout=0)
    assert flights.busy("k")  # still in flight for whoever asks next
    future = flights.start("k", work)
    gate.set()
    with pytest.raises(OSError, match="late failure"):
        await future
    assert len(flights) == 0


async def test_a_late_failure_is_not_reported_as_never_retrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[object] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    future: asyncio.Future[None] = loop.create_future()
    future.add_done_callback(forget_late_result)
    future.set_exception(OSError("nobody waits"))
    await asyncio.sleep(0)  # run the done callback
    del future
    gc.collect()
    assert reported == []


async def test_in_daemon_thread_hands_back_result_and_error() -> None:
    names: list[str] = []

    def ok() -> str:
        names.append(threading.current_thread().name)
        assert threading.current_thread().daemon
        return "done"

    def fails() -> None:
        raise ValueError("boom")

    assert await in_daemon_thread(ok, name="probe x") == "done"
    assert names == ["probe x"]
    with pytest.raises(ValueError, match="boom"):
        await in_daemon_thread(fails, name="probe y")


async def test_cancel_all_stops_the_work_and_its_waiters() -> None:
    # What a platform's aclose does with queries stuck on a dead server.
    flights: SingleFlight[str, int] = SingleFlight()
    started, never = asyncio.Event(), asyncio.Event()
    stopped: list[str] = []

    async def work() -> int:
        started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            stopped.append("work")
            raise
        return 1

    waiter = asyncio.ensure_future(flights.run("k", work))
    await started.wait()
    assert flights.busy("k")
    flights.cancel_all()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert stopped == ["work"]
    assert len(flights) == 0
