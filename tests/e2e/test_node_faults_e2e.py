"""Node faults with real kernel cifs / nfs mounts: one UML guest boot that
runs tests/e2e/inside/faults_inside.py (hung SMB and NFS servers, a SIGKILLed
and restarted driver process, the driver logs' secret scan).

The guest writes a junit report, the driver processes' logs and the figures
(``faults-node.json``) into the shared work dir. This test fails unless every
expected inside test ran and passed (no silent skips), and unless neither
the driver logs nor the guest console contain the SMB password. The figures
are copied to ``bench-results/``.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from tests.bench.common import RESULTS
from tests.e2e.inside_run import check_junit, run_inside
from tests.secret_scan import register_secret, watch_log_file

pytestmark = pytest.mark.e2e

INSIDE = "tests/e2e/inside/faults_inside.py"
# Random, with the characters that break naive quoting.
PASSWORD = register_secret(f'flt {secrets.token_urlsafe(12)} ,"`$\\')
EXPECTED = {
    "test_smb_hung_server",
    "test_nfs_hung_server",
    "test_smb_restage_replaces_a_stuck_session",
    "test_driver_restart_keeps_mounts",
    "test_driver_logs_hold_no_password",
}
FIGURES = "faults-node.json"


def test_node_faults_in_guest(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    res, tail = run_inside(
        INSIDE,
        tmp_path,
        password=PASSWORD,
        pytest_timeout=120,
        timeout=240,
        env={"BENCH_RESULTS": str(tmp_path)},
    )

    # The secret scan first: a failure message must not carry the password.
    logs = sorted((tmp_path / "driver-logs").glob("*.log"))
    for path in logs:
        watch_log_file(path)  # the session-wide scan reads them again
        assert PASSWORD not in path.read_text(errors="replace"), f"{path.name} holds the password"
    assert PASSWORD not in res.output, "the guest console shows the SMB password"
    if junit.exists():
        assert PASSWORD not in junit.read_text(errors="replace"), "the junit report holds it"

    assert res.returncode == 0, f"guest pytest exit {res.returncode}:\n{tail}"
    assert len(logs) >= 5, f"driver logs missing: {[p.name for p in logs]}"
    check_junit(junit, EXPECTED, tail)

    produced = tmp_path / FIGURES
    assert produced.exists(), f"no {FIGURES} from the guest"
    figures = json.loads(produced.read_text())
    assert {"smb_hung", "nfs_hung", "restart"} <= set(figures), sorted(figures)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(produced, RESULTS / FIGURES)
    print(json.dumps({k: figures[k] for k in ("smb_hung", "nfs_hung", "restart")}, indent=1))
