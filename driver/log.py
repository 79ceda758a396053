"""Structured logging: one structlog chain for our logs and stdlib ones.

JSON lines by default (``--log-format text`` for a klog-like human format).
Libraries that use stdlib ``logging`` (grpc, smbprotocol) are routed through
the same processors, so every line on stderr has one shape.  Request context
(method, volume ID) is bound with contextvars by the gRPC interceptor.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


# -v N → stdlib level.  Quiet RPCs (Probe, capabilities) log at DEBUG.
def level_for_verbosity(verbosity: int) -> int:
    if verbosity <= 0:
        return logging.WARNING
    if verbosity < 4:
        return logging.INFO
    return logging.DEBUG


def _text_renderer() -> structlog.dev.ConsoleRenderer:
    return structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)


def configure(fmt: str = "json", verbosity: int = 2, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger (idempotent)."""
    level = level_for_verbosity(verbosity)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else _text_renderer()
    structlog.configure(
        processors=[
            # Drop filtered-out events before any work is done on them.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("csi-smb-nfs")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "csi-smb-nfs":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries stay at WARNING unless the operator asks for a lot.
    for noisy in ("smbprotocol", "smbclient", "spnego"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 6 else logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
