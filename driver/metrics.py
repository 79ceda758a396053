"""Per-RPC Prometheus metrics on a private registry.

``<prefix>_operation_duration_seconds{method,code,protocol}`` (histogram),
``<prefix>_operations_total{method,code,protocol}`` (counter), and the node's
self-healing: ``<prefix>_mount_repairs_attempted_total{protocol}`` and
``<prefix>_mount_repairs_succeeded_total{protocol}`` (counters).  Labels are
bounded: a fixed set of method names, gRPC code names and protocols — never a
volume ID, path or anything a caller controls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector

PREFIX = "csi_smb_nfs"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.duration = Histogram(
            f"{PREFIX}_operation_duration_seconds",
            "Duration of CSI RPCs.",
            ("method", "code", "protocol"),
            registry=self.registry,
            buckets=_BUCKETS,
        )
        self.total = Counter(
            f"{PREFIX}_operations",
            "CSI RPCs handled, by method and gRPC status code.",
            ("method", "code", "protocol"),
            registry=self.registry,
        )
        self.repairs_attempted = Counter(
            f"{PREFIX}_mount_repairs_attempted",
            "Broken node mounts the driver started to repair at a republish.",
            ("protocol",),
            registry=self.registry,
        )
        self.repairs_succeeded = Counter(
            f"{PREFIX}_mount_repairs_succeeded",
            "Broken node mounts the driver repaired at a republish.",
            ("protocol",),
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe(self, method: str, code: str, protocol: str, seconds: float) -> None:
        self.duration.labels(method, code, protocol).observe(seconds)
        self.total.labels(method, code, protocol).inc()

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """``<prefix>_<name>``, read from ``read()`` at every scrape."""
        Gauge(f"{PREFIX}_{name}", documentation, registry=self.registry).set_function(read)

    def repair(self, protocol: str, *, succeeded: bool) -> None:
        self.repairs_attempted.labels(protocol).inc()
        if succeeded:
            self.repairs_succeeded.labels(protocol).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics in a daemon thread; return the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
