"""Session-wide test plumbing: the secret scan over everything the run produced."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests import secret_scan


class _Recorder(logging.Handler):
    """Keeps the text of every log record (our structlog events included)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            secret_scan.record_text(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
        except Exception:
            secret_scan.record_text(repr(record.__dict__))


@pytest.fixture(autouse=True, scope="session")
def _record_logs() -> Iterator[None]:
    handler = _Recorder(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    secret_scan.record_text(report.longreprtext)
    for _, content in report.sections:
        secret_scan.record_text(content)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    hits = secret_scan.findings()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if hits:
        if reporter is not None:
            reporter.write_line("SECRET SCAN FAILED:", red=True)
            for hit in hits:
                reporter.write_line(f"  {hit}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter is not None and secret_scan.SECRETS:
        reporter.write_line(
            f"secret scan: {len(secret_scan.SECRETS)} test secrets, "
            f"{len(secret_scan.TEXTS)} texts and {len(secret_scan.LOG_FILES)} driver logs: clean"
        )
