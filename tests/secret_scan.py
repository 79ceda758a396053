"""A session-wide scan for test secrets in everything the run produced.

Fixtures register every secret they create (Samba passwords, the fuzzer's
secret...) and every log file a driver subprocess writes.  The root
``conftest.py`` records every log record, captured output and failure text of
the run; at the end of the session all of it is searched for every
registered secret, and a hit fails the run.
"""

from __future__ import annotations

from pathlib import Path

SECRETS: set[str] = set()
LOG_FILES: list[Path] = []
TEXTS: list[str] = []


def register_secret(value: str) -> str:
    if len(value) >= 6:  # short values would match by accident
        SECRETS.add(value)
    return value


def watch_log_file(path: Path) -> Path:
    LOG_FILES.append(path)
    return path


def record_text(text: str) -> None:
    if text:
        TEXTS.append(text)


def findings() -> list[str]:
    """Where a secret showed up (never the secret itself)."""
    hits: list[str] = []
    sources: list[tuple[str, str]] = [(f"captured text #{i}", t) for i, t in enumerate(TEXTS)]
    for path in LOG_FILES:
        try:
            sources.append((str(path), path.read_text(errors="replace")))
        except OSError:
            continue
    for where, text in sources:
        hits.extend(
            f"{where}: a registered secret ({len(secret)} chars) appears"
            for secret in SECRETS
            if secret in text
        )
    return hits
