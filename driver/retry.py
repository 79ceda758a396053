"""How often a step is tried again when a failure says "this may pass now".

Only idempotent steps are retried (every backend operation is, except a
rename whose outcome is unknown, and a call on an open file, whose handle
does not survive a new connection).  The policy counts tries; the caller
says which failures are worth another try and what to mend before it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``tries`` tries of one step (1: never again)."""

    tries: int

    def __post_init__(self) -> None:
        if self.tries < 1:
            msg = "a step is tried at least once"
            raise ValueError(msg)

    def attempts(self) -> Iterator[bool]:
        """One item per try: True for the last one (its failure is final)."""
        for attempt in range(self.tries):
            yield attempt == self.tries - 1

    def run(
        self,
        step: Callable[[], T],
        *,
        retry_if: Callable[[Exception], bool],
        before_retry: Callable[[Exception], None],
    ) -> T:
        """``step()`` until it succeeds, its failure fails ``retry_if`` or
        the tries are used up; ``before_retry`` mends what failed (e.g.
        drops a dead connection) before the next try."""
        for last in self.attempts():
            try:
                return step()
            except Exception as exc:
                if last or not retry_if(exc):
                    raise
                before_retry(exc)
        raise AssertionError  # pragma: no cover - the last try returns or raises

    async def run_async(
        self,
        step: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[Exception], bool],
        before_retry: Callable[[Exception], None],
    ) -> T:
        """:meth:`run` for a coroutine step."""
        for last in self.attempts():
            try:
                return await step()
            except Exception as exc:
                if last or not retry_if(exc):
                    raise
                before_retry(exc)
        raise AssertionError  # pragma: no cover - the last try returns or raises


#: A step that is not idempotent (a rename): its outcome would be ambiguous.
ONCE = RetryPolicy(tries=1)
#: A connection that broke under an idempotent step: once more on a new one.
RECONNECT_ONCE = RetryPolicy(tries=2)


def on_broken_connection(*, idempotent: bool) -> RetryPolicy:
    """The rule for a step whose connection broke under it, for SMB and NFS
    alike: an idempotent step is tried once more on a new connection; any
    other fails with its first try."""
    return RECONNECT_ONCE if idempotent else ONCE
