"""Start-up time to the first successful Probe, and idle RSS per mode.

Baseline in the same run: a bare ``python -c pass`` start, so the driver's
own cost shows as a ratio.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from driver.csi import csi_pb2, csi_pb2_grpc
from tests.bench.common import table, write

RUNS = 10
#: The required stack's own floor (``tests/bench/floor_server.py``), the baseline
#: the modes are read against: grpc.aio + CSI messages + structlog + psutil.
FLOOR = "floor"
MODES = (FLOOR, "node", "controller", "all")


def _probe_ready(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            resp = csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=0.5)
            return bool(resp.ready.value)
    except grpc.RpcError:
        return False


def _command(mode: str, sock: Path, python: str) -> list[str]:
    if mode == FLOOR:  # by path: tests/ is not installed, the CSI messages are
        return [python, str(Path(__file__).with_name("floor_server.py")), f"unix://{sock}"]
    return [python, "-m", "driver", "serve", "--endpoint", f"unix://{sock}", "--mode", mode]


def start_once(mode: str, tmp: Path, python: str) -> tuple[float, int]:
    sock = tmp / f"{mode}.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        _command(mode, sock, python),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Not from the checkout: `-m driver` would then load the source tree
        # instead of the installed, byte-compiled package the image runs.
        cwd=tmp,
    )
    try:
        while not _probe_ready(sock):
            if proc.poll() is not None:
                raise RuntimeError(f"driver exited with {proc.returncode}")
            time.sleep(0.002)
        ready = time.perf_counter() - t0
        time.sleep(1.0)  # idle
        rss = psutil.Process(proc.pid).memory_info().rss
        return ready, rss
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bare_python(python: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def main(python: str = sys.executable) -> dict[str, Any]:
    """``python``: the interpreter of the environment to measure (the bench
    runner passes a runtime-only venv, as in the image: no dev packages)."""
    rows = []
    results: dict[str, Any] = {"python": python}
    baseline = statistics.median(bare_python(python) for _ in range(RUNS))
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved, so a burst of load elsewhere lands on every mode alike.
        samples: dict[str, list[tuple[float, int]]] = {mode: [] for mode in MODES}
        for _ in range(RUNS):
            for mode in MODES:
                samples[mode].append(start_once(mode, Path(tmp), python))
        floor_ready = statistics.median(s[0] for s in samples[FLOOR])
        floor_rss = statistics.median(s[1] for s in samples[FLOOR]) / 2**20
        for mode in MODES:
            ready = statistics.median(s[0] for s in samples[mode])
            rss = statistics.median(s[1] for s in samples[mode]) / 2**20
            results[mode] = {"ready_ms_median": ready * 1000, "idle_rss_mib_median": rss}
            rows.append(
                {
                    "mode": mode,
                    "ready_ms": ready * 1000,
                    "x_bare_python": ready / baseline,
                    "x_floor": ready / floor_ready,
                    "idle_rss_MiB": rss,
                    "rss_over_floor_MiB": rss - floor_rss,
                }
            )
    results["bare_python_start_ms_median"] = baseline * 1000
    print(f"start-up (median of {RUNS}; bare `python -c pass` = {baseline * 1000:.1f} ms)")
    print(
        table(
            rows,
            ["mode", "ready_ms", "x_bare_python", "x_floor", "idle_rss_MiB", "rss_over_floor_MiB"],
        )
    )
    node = results["node"]
    print(
        f"  targets (issue 18): first Probe <= 120 ms: node {node['ready_ms_median']:.0f} ms,"
        f" controller {results['controller']['ready_ms_median']:.0f} ms; the stack's floor alone"
        f" {floor_ready * 1000:.0f} ms. Idle RSS node <= 36 MiB: {node['idle_rss_mib_median']:.1f}"
        f" MiB; controller <= 45 MiB: {results['controller']['idle_rss_mib_median']:.1f} MiB;"
        f" the floor alone {floor_rss:.1f} MiB"
    )
    write("startup", results)
    return results


if __name__ == "__main__":
    main()
