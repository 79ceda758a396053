"""What a Windows node makes of a volume's source port and mount options."""

from __future__ import annotations

from collections.abc import Iterable

from driver.errors import FailedPrecondition, InvalidArgument
from driver.log import get_logger
from driver.source import Source
from node.windows.paths import parse_bool

log = get_logger("node.windows")

SMB_PORT = 445


def port_message(port: int) -> str:
    return (
        f"SMB port {port}: Windows maps SMB shares (New-SmbGlobalMapping) on port {SMB_PORT} "
        "only; serve the share on 445 for Windows nodes"
    )


def require_privacy(source: Source, options: Iterable[str], default: bool) -> bool:
    """RequirePrivacy from the mount options; refuse ports other than 445."""
    if source.port is not None and source.port != SMB_PORT:
        raise FailedPrecondition(port_message(source.port))
    privacy = default
    for option in options:
        key, has_value, value = option.partition("=")
        key = key.strip().lower()
        if key == "requireprivacy":
            privacy = parse_bool(value, what="mount option requirePrivacy")
        elif key == "seal" and not has_value:
            privacy = True
        elif key == "port":
            if not value.strip().isdigit():
                raise InvalidArgument(f"mount option port: {value!r} is not a number")
            if int(value) != SMB_PORT:
                raise FailedPrecondition(port_message(int(value)))
        else:
            log.debug("mount option has no meaning on Windows; ignored", option=key)
    return privacy
