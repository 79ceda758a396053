"""The suites' own plumbing: the ``root`` marker and the leaked-task guard."""

from __future__ import annotations

import asyncio

import pytest

from tests import leaks
from tests.servers import plugin


def test_root_marker_skips_when_not_root(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    request.node.add_marker(pytest.mark.root(reason="needs the moon"))
    monkeypatch.setattr(plugin, "is_root", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="needs the moon"):
        plugin.pytest_runtest_setup(request.node)
    monkeypatch.setattr(plugin, "is_root", lambda: True)
    plugin.pytest_runtest_setup(request.node)  # no skip


async def test_leak_guard_fails_a_block_that_leaves_a_task() -> None:
    forever: asyncio.Future[bool] | None = None
    with pytest.raises(pytest.fail.Exception, match="left 1 asyncio task"):
        async with leaks.no_leaked_tasks():
            forever = asyncio.ensure_future(asyncio.Event().wait())
    assert forever is not None
    assert forever.cancelled()


async def test_leak_guard_lets_finished_and_cancelled_tasks_go() -> None:
    async with leaks.no_leaked_tasks():
        done = asyncio.ensure_future(asyncio.sleep(0))
        stopped = asyncio.ensure_future(asyncio.Event().wait())
        stopped.cancel()  # settles within the guard's loop turns
    assert done.done()
