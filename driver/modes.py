"""Octal permission modes given as text (``mountPermissions``)."""

from __future__ import annotations

import re

from driver.errors import InvalidArgument


def parse_octal_mode(text: str, *, what: str = "mountPermissions") -> int:
    """``"0775"``, ``"775"`` or ``"0o775"`` → 0o775; at most 0o7777."""
    text = text.strip()
    if not re.fullmatch(r"(0o)?[0-7]{1,5}", text):
        raise InvalidArgument(f"{what}: {text!r} is not an octal mode like 0777")
    mode = int(text.removeprefix("0o"), 8)
    if mode > 0o7777:
        raise InvalidArgument(f"{what}: mode out of range")
    return mode
