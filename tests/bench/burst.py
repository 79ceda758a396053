"""Bursts of operations as csi-provisioner sends them, and what they cost.

``run_burst`` keeps N calls in flight and retries like the Go sidecar;
``Burst`` holds the completion times (the rate in each tenth of a burst);
``CpuMeter`` counts the CPU each group of processes spent over it;
``RssSampler`` samples a process tree's memory.  Used by
``tests.bench.scale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import psutil

from tests.bench.lean_client import LeanRpcError

#: Calls in flight at once: one csi-provisioner with 64 workers.
CONCURRENCY = 64
TENTHS = 10
#: What csi-provisioner retries (everything but a final error) and how.
RETRIED = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
BACKOFF_START = 1.0
BACKOFF_MAX = 300.0
MAX_ATTEMPTS = 8


@dataclass
class Burst:
    """One burst of N operations: completion times, retries, errors."""

    n: int
    started: float = 0.0
    done: list[float] = field(default_factory=list)
    retries: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    #: CPU milliseconds per completed operation, by process group (CpuMeter).
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return (max(self.done) - self.started) if self.done else float("nan")

    def tenths(self) -> list[float]:
        """Operations per second in each tenth of the burst, by completion order."""
        ordered = sorted(self.done)
        step = len(ordered) / TENTHS
        rates = []
        prev = self.started
        for k in range(1, TENTHS + 1):
            idx = min(len(ordered) - 1, round(k * step) - 1)
            if idx < 0:
                rates.append(float("nan"))
                continue
            t = ordered[idx]
            rates.append(step / (t - prev) if t > prev else float("nan"))
            prev = t
        return rates

    def summary(self) -> dict[str, Any]:
        return {
            "n": len(self.done),
            "wall_s": self.wall,
            "per_second": len(self.done) / self.wall if self.done else float("nan"),
            "tenths_per_second": self.tenths(),
            "retries": self.retries,
            "errors": self.errors,
            "error_codes": self.error_codes,
            "cpu_ms_per_op": self.cpu_ms_per_op,
        }


#: Which processes of a group count: the process alone, with all its
#: descendants, or its descendants only.
Scope = Literal["process", "tree", "descendants"]
#: A group: the root process (None: not measured) and what of it counts.
Group = tuple[int | None, Scope]


def client_and_server(server_pid: int | None) -> dict[str, Group]:
    """This process alone (the driver and servers are its children) and the
    server with its per-connection children."""
    return {"client": (os.getpid(), "process"), "server": (server_pid, "tree")}


class CpuMeter:
    """CPU seconds (user + system) that groups of processes spend in a span.

    On a machine with few cores a burst is CPU-bound, so CPU per operation,
    not wall time, says what each side costs: the same work done by fewer
    CPU milliseconds is the only way to a higher ceiling.
    """

    def __init__(self, groups: Mapping[str, Group]) -> None:
        self._groups = {name: (pid, scope) for name, (pid, scope) in groups.items() if pid}
        self._start: dict[str, dict[int, float]] = {}
        self.seconds: dict[str, float] = {}

    @staticmethod
    def _read(pid: int, scope: Scope) -> dict[int, float]:
        out: dict[int, float] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            below = root.children(recursive=True) if scope != "process" else []
            for proc in below if scope == "descendants" else [root, *below]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    out[proc.pid] = t.user + t.system
        return out

    def __enter__(self) -> CpuMeter:
        self._start = {name: self._read(*group) for name, group in self._groups.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        for name, group in self._groups.items():
            end = self._read(*group)
            start = self._start[name]
            # Processes that ended in between are not counted (a short-lived
            # helper at most); new ones count from zero.
            self.seconds[name] = sum(t - start.get(p, 0.0) for p, t in end.items())

    def per_op_ms(self, ops: int) -> dict[str, float]:
        return {name: 1000 * sec / max(ops, 1) for name, sec in self.seconds.items()}


async def run_burst(
    n: int,
    concurrency: int,
    op: Callable[[int], Awaitable[object]],
    cpu_of: Mapping[str, Group] | None = None,
) -> Burst:
    """``op(i)`` for i in range(n), ``concurrency`` at a time, retried like
    csi-provisioner; with the CPU each group of ``cpu_of`` spent per operation."""
    burst = Burst(n)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        delay = BACKOFF_START
        for attempt in range(MAX_ATTEMPTS):
            name = ""
            async with sem:
                try:
                    await op(i)
                except LeanRpcError as exc:
                    code = exc.code
                except Exception as exc:  # the raw clients' own failures
                    code = None
                    name = type(exc).__name__
                else:
                    burst.done.append(time.perf_counter())
                    return
            label = code.name if code is not None else name
            burst.error_codes[label] = burst.error_codes.get(label, 0) + 1
            if code not in RETRIED or attempt == MAX_ATTEMPTS - 1:
                burst.errors += 1
                return
            burst.retries += 1
            await asyncio.sleep(delay)  # outside the semaphore, like a requeued work item
            delay = min(delay * 2, BACKOFF_MAX)

    with CpuMeter(cpu_of or {}) as cpu:
        burst.started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
    burst.cpu_ms_per_op = cpu.per_op_ms(len(burst.done))
    return burst


class RssSampler:
    """RSS of a process and all its children, every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self._proc = psutil.Process(pid)
        self._period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mib(self) -> float:
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            with contextlib.suppress(psutil.Error):
                self.samples.append(self.rss_mib())

    def __enter__(self) -> RssSampler:
        self.samples.append(self.rss_mib())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.samples.append(self.rss_mib())

    def summary(self) -> dict[str, float]:
        return {
            "rss_start_mib": self.samples[0],
            "rss_max_mib": max(self.samples),
            "rss_end_mib": self.samples[-1],
        }


def cpu_report(raw: dict[str, Any], drv: dict[str, Any]) -> dict[str, float]:
    """Where the CPU of a create goes, and the throughput it allows.

    With every core busy, throughput <= cores / (CPU seconds per create, all
    processes together): the ceiling the driver's own CPU leaves, whatever the
    scheduling.  The lean client is cheap; the driver's share is what it adds
    over the raw client (parsing, gRPC, the worker hop, logging).
    """
    r, d = raw["create"]["cpu_ms_per_op"], drv["create"]["cpu_ms_per_op"]
    cores = os.cpu_count() or 1
    raw_total = r.get("client", 0.0) + r.get("server", 0.0)
    drv_total = (
        d.get("client", 0.0) + d.get("driver", 0.0) + d.get("worker", 0.0) + d.get("server", 0.0)
    )
    raw_ceiling = 1000 * cores / raw_total if raw_total else float("nan")
    drv_ceiling = 1000 * cores / drv_total if drv_total else float("nan")
    return {
        "cores": cores,
        "raw_client_ms": r.get("client", 0.0),
        "raw_server_ms": r.get("server", 0.0),
        "driver_client_ms": d.get("client", 0.0),
        "driver_ms": d.get("driver", 0.0),
        "driver_worker_ms": d.get("worker", 0.0),
        "driver_server_ms": d.get("server", 0.0),
        "probe_driver_ms": drv["probe"]["cpu_ms_per_op"].get("driver", 0.0),
        "probe_client_ms": drv["probe"]["cpu_ms_per_op"].get("client", 0.0),
        "raw_ceiling_per_s": raw_ceiling,
        "driver_ceiling_per_s": drv_ceiling,
        "ceiling_ratio": drv_ceiling / raw_ceiling,
    }
