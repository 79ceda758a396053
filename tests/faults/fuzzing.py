"""What the fuzz tests share: the driver on a Unix socket over recording fakes,
the answers an RPC may give (success or a documented code, never a secret),
a tally of what was sent and answered, and adversarial text."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from controller.service import ControllerPlugin
from driver.config import Config, parse_endpoint
from driver.csi import csi_pb2_grpc
from driver.server import DriverServer
from node.service import NodePlugin
from tests.fakes.platform import FakePlatform
from tests.fakes.share import FakeBackends
from tests.secret_scan import register_secret

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SECRET = register_secret("Fuzz-S3cret-Value")
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class Server:
    """One driver on a Unix socket, run by a loop in a background thread."""

    def __init__(self, sock: Path) -> None:
        self.backends = FakeBackends()
        self.platform = FakePlatform()
        cfg = Config(endpoint=parse_endpoint(f"unix://{sock}"), node_id="fuzz")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        plugins = [ControllerPlugin(self.backends), NodePlugin(cfg, self.platform)]

        async def start() -> DriverServer:
            server = DriverServer(cfg, plugins)  # type: ignore[arg-type]
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self.channel = grpc.insecure_channel(f"unix://{sock}")
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Answers:
    """A tally of what the fuzzer sent, per RPC, and what came back; every
    answer must be success or an ALLOWED code whose details hold no secret."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()

    def call(self, method: Any, request: Any, name: str) -> Any:
        """``method(request)``; its result, or None if it answered an error."""
        self.sent[name] += 1
        try:
            result = method(request, timeout=10)
        except grpc.RpcError as err:
            assert err.code() in ALLOWED, (name, err.code(), err.details(), request)
            assert SECRET not in (err.details() or "")
            self.codes[f"{name}:{err.code().name}"] += 1
            return None
        self.codes[f"{name}:OK"] += 1
        return result

    def check_reached(self, names: Iterable[str]) -> None:
        """Print the tally; the fuzzer must have reached each RPC's success path
        too, not only its rejections."""
        print("\nfuzz examples per RPC:", dict(sorted(self.sent.items())))
        print("answers:", dict(sorted(self.codes.items())))
        for name in names:
            assert self.codes[f"{name}:OK"] > 0, name


# -- adversarial text ----------------------------------------------------------------

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "..",
            "../..",
            "/",
            "a/../../b",
            "..\\..",
            "\x00",
            "%2e%2e",
            "CON",
            "a//b",
            "${x}",
            "${pvc.metadata.name}",
            "${pvc.metadata.namespace}/${pv.metadata.name}",
            " ",
            "~",
            "archived-x",
            "a:b",
            "*",
            "\\\\srv\\share",
            "//srv/share/..",
            "srv:/../etc",
        ]
    ),
)
