"""Session-wide test plumbing: the shared servers, the secret scan over everything
the run produced."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

from tests import leaks, secret_scan

# Property tests check behaviour, not speed: no per-example deadline, so that
# a loaded machine (2 cores shared by several runs) cannot fail them on time.
settings.register_profile("project", deadline=None)
settings.load_profile("project")

# The real servers (samba, ganesha_v3, ganesha_v4) and the ``root`` marker.
pytest_plugins = ["tests.servers.plugin"]


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every coroutine test gets the leak guard, set up first so that it is
    # torn down last (after the fixtures that own tasks have stopped them).
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "obj", None)):
            fixtures = getattr(item, "fixturenames", None)
            if fixtures is not None and "no_leaked_tasks" not in fixtures:
                fixtures.insert(0, "no_leaked_tasks")


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it (tests/leaks.py)."""
    async with leaks.no_leaked_tasks():
        yield


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
