from __future__ import annotations

from pathlib import Path

import pytest

from tests import secret_scan


def test_scan_finds_a_planted_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Private state, so the session-wide scan never sees the planted secret.
    monkeypatch.setattr(secret_scan, "SECRETS", set())
    monkeypatch.setattr(secret_scan, "TEXTS", [])
    monkeypatch.setattr(secret_scan, "LOG_FILES", [])
    planted = "planted-" + "x" * 10
    secret_scan.register_secret(planted)
    secret_scan.register_secret("abc")  # too short to scan for
    secret_scan.record_text("a harmless line")
    assert secret_scan.findings() == []
    log = tmp_path / "driver.log"
    log.write_text(f"... password={planted} ...")
    secret_scan.watch_log_file(log)
    hits = secret_scan.findings()
    assert len(hits) == 1
    assert str(log) in hits[0]
    assert planted not in hits[0]
