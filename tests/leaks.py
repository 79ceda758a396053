"""The leaked-task guard that every coroutine test runs inside (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

#: Loop turns a test's tasks get to finish what its teardown started.
SETTLE_TURNS = 10


@contextlib.asynccontextmanager
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail (after cancelling them) if tasks started in the block still run after it.

    A leaked task keeps working (or waiting) after its test: it can hide a
    missing cancel or await in the code under test, and in a long-lived
    driver it is a slow leak.
    """
    before = asyncio.all_tasks()
    yield
    # A fixture's teardown may run in another task than its setup: never count it.
    this = asyncio.current_task()
    leaked: list[asyncio.Task[object]] = []
    for _ in range(SETTLE_TURNS):
        leaked = [t for t in asyncio.all_tasks() - before if t is not this and not t.done()]
        if not leaked:
            return
        await asyncio.sleep(0)
    names = sorted(repr(t.get_coro()) for t in leaked)
    for task in leaked:
        task.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)
    pytest.fail(f"the test left {len(leaked)} asyncio task(s) running: {names}")
