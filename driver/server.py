"""The gRPC server: endpoint binding, services, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from driver import console
from driver.boundary import ErrorBoundary
from driver.config import Config, Endpoint, check_serve_endpoint
from driver.csi import csi_pb2_grpc
from driver.identity import IdentityService
from driver.log import get_logger
from driver.plugin import ServicePlugin, build_plugins

if TYPE_CHECKING:
    from driver.metrics import Metrics

log = get_logger("driver.server")


class EndpointInUseError(RuntimeError):
    pass


def _prepare_unix_socket(path: Path) -> None:
    """Create the socket's directory; replace a stale socket, refuse a live one."""
    if sys.platform == "win32":  # grpcio cannot listen on AF_UNIX there; the chart bridges TCP
        raise EndpointInUseError("unix:// endpoints are not supported on Windows: use tcp://")
    else:  # noqa: RET506 - a platform branch mypy can skip on win32
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise EndpointInUseError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(str(path))
        except OSError:
            log.info("removing stale socket", path=str(path))
            path.unlink(missing_ok=True)
        else:
            raise EndpointInUseError(f"another process is serving on {path}")
        finally:
            probe.close()


class DriverServer:
    """The driver's gRPC server with its services; start, then stop."""

    def __init__(self, config: Config, plugins: Sequence[ServicePlugin] | None = None) -> None:
        self.config = config
        self.plugins = list(plugins) if plugins is not None else build_plugins(config)
        # prometheus_client costs ~25 ms and ~4 MiB: load it only when asked.
        self.metrics: Metrics | None = None
        if config.metrics_address is not None:
            from driver.metrics import Metrics

            self.metrics = Metrics()
            for plugin in self.plugins:
                gauges = getattr(plugin, "gauges", None)  # optional: plugin.GaugeSource
                if gauges is not None:
                    for name, (documentation, read) in gauges().items():
                        self.metrics.gauge(name, documentation, read)
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)],
        )
        # Every handler goes through the error boundary, wrapped as it is registered.
        registrar = ErrorBoundary(self.metrics).registrar(self.server)
        csi_pb2_grpc.add_IdentityServicer_to_server(
            IdentityService(config.driver_name, self.plugins), registrar
        )
        for plugin in self.plugins:
            plugin.register(registrar)
        self.port: int | None = None
        self.metrics_port: int | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self.config.endpoint

    async def start(self) -> None:
        ep = self.config.endpoint
        check_serve_endpoint(ep)  # also for a Config built without the command line
        if ep.scheme == "unix":
            _prepare_unix_socket(Path(ep.path))
        port = self.server.add_insecure_port(ep.grpc_target)
        if ep.scheme == "tcp":
            if port == 0:
                raise EndpointInUseError(f"cannot listen on {ep}")
            self.port = port
        await self.server.start()
        if ep.scheme == "unix":
            os.chmod(ep.path, 0o660)  # kubelet and sidecars run as root; nobody else needs it
        for plugin in self.plugins:
            await plugin.start()
        if self.metrics is not None and self.config.metrics_address is not None:
            host, mport = self.config.metrics_address
            self.metrics_port = self.metrics.serve(host, mport)
        log.info(
            "serving",
            endpoint=str(ep) if ep.scheme == "unix" else f"tcp://{ep.host}:{self.port}",
            mode=self.config.mode,
            driver=self.config.driver_name,
            node_id=self.config.node_id,
            metrics_port=self.metrics_port,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish (up to ``grace``), clean up."""
        grace = self.config.grace_period if grace is None else grace
        await self.server.stop(grace)
        for plugin in self.plugins:
            try:
                await plugin.aclose()
            except Exception as exc:  # noqa: BLE001 - shutdown continues regardless
                log.warning("service shutdown failed", service=plugin.name, error=repr(exc))
        if self.metrics is not None:
            self.metrics.stop()
        ep = self.config.endpoint
        if ep.scheme == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ep.path)
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _install_fallback_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Where the loop cannot watch signals (Windows): plain ``signal.signal``
    handlers for Ctrl+C (SIGINT), Ctrl+Break (SIGBREAK) and SIGTERM that wake
    the loop thread-safely."""

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(stop.set)

    for name in ("SIGINT", "SIGBREAK", "SIGTERM"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, handler)


async def serve(
    config: Config,
    plugins: Sequence[ServicePlugin] | None = None,
    *,
    console_registrar: console.Registrar | None = console.default_registrar,
) -> None:
    """Run until SIGTERM/SIGINT (on Windows also a console control event:
    Ctrl+C, Ctrl+Break, close, shutdown), then stop gracefully."""
    driver = DriverServer(config, plugins)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # Windows: no signal handlers on the loop
            _install_fallback_signal_handlers(loop, stop)
            break
    stopped = threading.Event()
    remove_console_handler: Callable[[], None] | None = None
    if console_registrar is not None:

        def request_stop() -> None:  # on a thread Windows made for the event
            loop.call_soon_threadsafe(stop.set)

        # Held for the drain plus plugin shutdown; hcsshim ends the job 5 s in anyway.
        handler = console.ConsoleStop(request_stop, stopped, config.grace_period + 1)
        remove_console_handler = console_registrar(handler)
    try:
        try:
            await driver.start()
        except BaseException:
            await driver.server.stop(None)  # release grpc's resources before the loop closes
            raise
        try:
            await stop.wait()
            log.info("stop requested, stopping", grace_seconds=config.grace_period)
        finally:
            await driver.stop()
    finally:
        stopped.set()  # lets a held console event return: Windows ends the process then
        if remove_console_handler is not None:
            remove_console_handler()
