"""driver.retry: the one retry policy object."""

from __future__ import annotations

import pytest

from driver.retry import ONCE, RECONNECT_ONCE, RetryPolicy


def test_attempts_mark_the_last_try() -> None:
    assert list(RetryPolicy(tries=3).attempts()) == [False, False, True]
    assert list(RECONNECT_ONCE.attempts()) == [False, True]
    assert list(ONCE.attempts()) == [True]


def test_a_step_is_tried_at_least_once() -> None:
    with pytest.raises(ValueError, match="at least once"):
        RetryPolicy(tries=0)
