"""The real command runner (AsyncioRunner): results, timeouts and process groups."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from driver.errors import DeadlineExceeded, Internal
from node.runner import AsyncioRunner, CommandTimeout
from tests.harness import wait_until

# ---------------------------------------------------------------- real runner


@pytest.fixture
def runner() -> AsyncioRunner:
    return AsyncioRunner(kill_grace=1.0)


async def test_runner_results(runner: AsyncioRunner) -> None:
    ok = await runner.run(
        ["sh", "-c", "read x; echo out:$x:$FOO; echo err >&2"],
        timeout=10,
        env={"FOO": "bar"},
        stdin=b"in\n",
    )
    assert ok.ok
    assert ok.stdout == "out:in:bar\n"
    assert ok.stderr == "err\n"
    failed = await runner.run(["sh", "-c", "exit 3"], timeout=10)
    assert (failed.ok, failed.returncode) == (False, 3)
    with pytest.raises(Internal, match="cannot run"):
        await runner.run(["/nonexistent/tool"], timeout=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups via /proc")
async def test_runner_timeout_kills_the_whole_group(runner: AsyncioRunner, tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.2 s") as info:
        await runner.run(["sh", "-c", script], timeout=0.2)
    assert isinstance(info.value, DeadlineExceeded)
    assert info.value.finished is None  # gone within the grace period
    child = int(pidfile.read_text())
    assert not _alive(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups via /proc")
async def test_runner_hands_back_a_finished_awaitable(tmp_path: Path) -> None:
    runner = AsyncioRunner(kill_grace=0)  # no grace: the caller gets the awaitable
    with pytest.raises(CommandTimeout, match="has not exited yet") as info:
        await runner.run(["sleep", "30"], timeout=0.1)
    assert info.value.finished is not None
    await asyncio.wait_for(info.value.finished, 10)
    assert runner.stuck == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process state via /proc")
async def test_runner_cancellation_kills_and_attaches_finished(
    runner: AsyncioRunner, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}.new && mv {pidfile}.new {pidfile} && exec sleep 30"
    task = asyncio.ensure_future(runner.run(["sh", "-c", script], timeout=30))
    await wait_until(pidfile.exists)  # the command runs: the runner waits for its end
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    finished = getattr(info.value, "finished", None)
    assert finished is not None
    await asyncio.wait_for(finished, 10)
    assert not _alive(int(pidfile.read_text()))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"
