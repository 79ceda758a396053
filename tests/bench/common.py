"""Helpers shared by the benchmarks: the driver as a subprocess, timed rows of
operations (asyncio or threads), requests, and the result files and tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from driver.csi import csi_pb2
from tests.csi_requests import cap
from tests.harness import stop_process, wait_for_socket

RESULTS = Path(os.environ.get("BENCH_RESULTS", "bench-results"))


def start_driver(
    tmp: Path,
    *flags: str,
    prefix: Sequence[str] = (),
    sock: str = "bench.sock",
    verbosity: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """``csi-smb-nfs serve --mode controller`` on a socket in ``tmp``, serving;
    ``prefix`` (e.g. ``nsenter --net=...``) runs it elsewhere.  The log level is
    the operator's default unless ``BENCH_DRIVER_VERBOSITY`` says otherwise."""
    path = tmp / sock
    level = verbosity or os.environ.get("BENCH_DRIVER_VERBOSITY", "2")
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "driver", "serve", "--mode", "controller",
         "--endpoint", f"unix://{path}", *flags, "-v", level],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_socket(path, proc)
    return proc, f"unix://{path}"


def stop_driver(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """The driver's graceful drain (SIGTERM), SIGKILL after ``timeout``."""
    stop_process(proc, timeout)


@contextlib.contextmanager
def driver_running(
    tmp: Path,
    *flags: str,
    prefix: Sequence[str] = (),
    sock: str = "bench.sock",
    verbosity: str | None = None,
    stop_timeout: float = 30,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """:func:`start_driver` for the block, :func:`stop_driver` after it."""
    proc, endpoint = start_driver(tmp, *flags, prefix=prefix, sock=sock, verbosity=verbosity)
    try:
        yield proc, endpoint
    finally:
        stop_driver(proc, stop_timeout)


def create_request(
    name: str, params: dict[str, str], secrets_: dict[str, str], flags: Sequence[str] = ()
) -> csi_pb2.CreateVolumeRequest:
    """A CreateVolume of a multi-writer mount volume, as a StorageClass makes it."""
    return csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[cap(*flags)], parameters=params, secrets=secrets_
    )


async def timed(
    n: int,
    concurrency: int,
    op: Callable[[int], Awaitable[Any]],
    *,
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> dict[str, float]:
    """``op(0..n-1)`` with at most ``concurrency`` in flight: the row's :func:`summary`
    (an ``op`` that raises one of ``errors`` counts as an error, not a latency)."""
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with slots:
            t0 = time.perf_counter()
            try:
                await op(i)
            except errors:
                failed += 1
                return
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return summary(latencies, time.perf_counter() - start, failed)


def timed_in_threads(n: int, concurrency: int, op: Callable[[int], Any]) -> dict[str, float]:
    """:func:`timed` for a blocking ``op``, from ``min(concurrency, 8)`` threads
    started in this thread (so in its network namespace): a raw client's floor."""

    async def go() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(min(concurrency, 8)) as pool:
            return await timed(n, concurrency, lambda i: loop.run_in_executor(pool, op, i))

    return asyncio.run(go())


def find_row(
    rows: list[dict[str, Any]], client: str, concurrency: int, **exact: Any
) -> dict[str, Any]:
    """The row whose client starts with ``client`` at ``concurrency`` (and ``exact`` fields)."""
    return next(
        r
        for r in rows
        if r["client"].startswith(client)
        and r["concurrency"] == concurrency
        and all(r.get(k) == v for k, v in exact.items())
    )


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(latencies: Sequence[float], wall: float, errors: int) -> dict[str, float]:
    return {
        "n": len(latencies),
        "median_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) * 1000,
        "per_second": len(latencies) / wall if wall > 0 else float("nan"),
        "errors": errors,
        "wall_s": wall,
    }


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
        for r in rows
    ]
    return "\n".join(lines)


def in_guest() -> bool:
    """True inside the user-mode Linux guest (tests/e2e/uml)."""
    return os.path.exists("/run/e2e-guest")


def bench_in_guest(
    name: str,
    what: str,
    *,
    table_from: str,
    table_lines: int,
    timeout: float,
    servers: bool = False,
) -> dict[str, Any]:
    """Run ``python -m tests.bench.<name>`` in the UML guest (with its Samba and
    NFS server if ``servers``); print the guest's table (``table_lines`` lines
    from the one starting with ``table_from``) and keep its ``<name>.json``.
    ``what`` names the benchmark in the messages."""
    from tests.e2e.uml.guest import GuestSetupError, run_in_guest

    if os.geteuid() != 0:
        print(f"\n{what}: skipped (the UML guest needs root)")
        return {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        workdir = Path(tmp)
        try:
            res = run_in_guest(
                [".venv/bin/python", "-m", f"tests.bench.{name}"],
                workdir=workdir,
                samba=servers,
                nfs=servers,
                env={"BENCH_RESULTS": str(workdir)},
                timeout=timeout,
            )
        except GuestSetupError as exc:
            print(f"\n{what}: no guest ({exc})")
            return {}
        produced = workdir / f"{name}.json"
        if res.returncode != 0 or not produced.exists():
            print(f"\n{what} failed in the guest (exit {res.returncode}):")
            print("\n".join(res.output.splitlines()[-40:]))
            return {}
        out = res.output.splitlines()
        first = next(i for i, line in enumerate(out) if line.startswith(table_from))
        print()
        print("\n".join(out[first : first + table_lines]))
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(produced, RESULTS / produced.name)
        data: dict[str, Any] = json.loads(produced.read_text())
        return data
