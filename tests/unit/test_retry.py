"""driver.retry: the one retry policy object."""

from __future__ import annotations

import pytest

from driver.retry import ONCE, RECONNECT_ONCE, RetryPolicy, on_broken_connection


def test_attempts_mark_the_last_try() -> None:
    assert list(RetryPolicy(tries=3).attempts()) == [False, False, True]
    assert list(RECONNECT_ONCE.attempts()) == [False, True]
    assert list(ONCE.attempts()) == [True]


def test_a_step_is_tried_at_least_once() -> None:
    with pytest.raises(ValueError, match="at least once"):
        RetryPolicy(tries=0)


class Flaky:
    """A step that fails ``failures`` times with ``error``, then answers; records its tries."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.tries = 0
        self.mended: list[Exception] = []

    def __call__(self) -> str:
        self.tries += 1
        if self.tries <= self.failures:
            raise self.error
        return "done"

    async def coro(self) -> str:
        return self()

    def mend(self, exc: Exception) -> None:
        self.mended.append(exc)


def test_run_retries_what_the_caller_names_after_mending() -> None:
    step = Flaky(1, ConnectionError("gone"))
    assert (
        RECONNECT_ONCE.run(
            step, retry_if=lambda e: isinstance(e, ConnectionError), before_retry=step.mend
        )
        == "done"
    )
    assert step.tries == 2
    assert step.mended == [step.error]


def test_run_gives_up_after_the_last_try() -> None:
    step = Flaky(2, ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        RECONNECT_ONCE.run(step, retry_if=lambda e: True, before_retry=step.mend)
    assert (step.tries, len(step.mended)) == (2, 1)


def test_run_does_not_retry_other_failures() -> None:
    step = Flaky(1, ValueError("final"))
    with pytest.raises(ValueError, match="final"):
        RECONNECT_ONCE.run(
            step, retry_if=lambda e: isinstance(e, ConnectionError), before_retry=step.mend
        )
    assert (step.tries, step.mended) == (1, [])


async def test_run_async_follows_the_same_rule() -> None:
    step = Flaky(1, ConnectionError("gone"))
    got = await RECONNECT_ONCE.run_async(step.coro, retry_if=lambda e: True, before_retry=step.mend)
    assert (got, step.tries) == ("done", 2)
    step = Flaky(1, ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await ONCE.run_async(step.coro, retry_if=lambda e: True, before_retry=step.mend)
    assert (step.tries, step.mended) == (1, [])


def test_a_broken_connection_repeats_idempotent_steps_only() -> None:
    assert on_broken_connection(idempotent=True) is RECONNECT_ONCE
    assert on_broken_connection(idempotent=False) is ONCE
