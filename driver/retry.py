"""How often a step is tried again when a failure says "this may pass now".

Only idempotent steps are retried (every backend operation is, except a
rename whose outcome is unknown).  The policy counts tries; the caller
decides which failures are worth another try.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


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


#: A step that is not idempotent (a rename): its outcome would be ambiguous.
ONCE = RetryPolicy(tries=1)
#: A connection that broke under an idempotent step: once more on a new one.
RECONNECT_ONCE = RetryPolicy(tries=2)
