from __future__ import annotations

import os
import subprocess
import sys

import pytest

from driver.cli import build_parser
from driver.config import Config, config_from_args, parse_endpoint
from driver.errors import InvalidArgument


def _config(*argv: str) -> Config:
    args = build_parser().parse_args(["serve", *argv])
    return config_from_args(args)


def test_defaults() -> None:
    cfg = _config()
    assert cfg.endpoint.scheme == "unix"
    assert cfg.endpoint.path == "/csi/csi.sock"
    assert cfg.mode == "all"
    assert cfg.runs_controller
    assert cfg.runs_node
    assert cfg.node_id  # host name
    assert cfg.driver_name == "smb-nfs.csi.io"
    assert cfg.metrics_address is None
    assert cfg.log_format == "json"


def test_all_flags() -> None:
    cfg = _config(
        "--endpoint",
        "tcp://127.0.0.1:10000",
        "--mode",
        "node",
        "--node-id",
        "n1",
        "--driver-name",
        "x.example.com",
        "--metrics-address",
        "127.0.0.1:9808",
        "--log-format",
        "text",
        "-v",
        "5",
    )
    assert cfg.endpoint.grpc_target == "127.0.0.1:10000"
    assert cfg.mode == "node"
    assert not cfg.runs_controller
    assert cfg.metrics_address == ("127.0.0.1", 9808)
    assert cfg.verbosity == 5
    with pytest.raises(AttributeError):
        cfg.mode = "all"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("unix:///csi/csi.sock", "unix:///csi/csi.sock"),
        ("tcp://[::1]:5000", "[::1]:5000"),
        ("unix://./run/csi.sock", f"unix://{os.getcwd()}/run/csi.sock"),
    ],
)
def test_endpoints(text: str, target: str) -> None:
    assert parse_endpoint(text).grpc_target == target


@pytest.mark.parametrize(
    "text", ["csi.sock", "unix://csi.sock", "tcp://host", "tcp://h:0", "http://x:1"]
)
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_endpoint(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["--endpoint", "bogus"],
        ["--driver-name=-bad-"],
        ["--driver-name", "a" * 64],
        ["--metrics-address", "nohost"],
        ["--grace-period", "0"],
        ["--backend-workers", "0"],
        ["-v", "99"],
    ],
)
def test_bad_flags_rejected(argv: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        _config(*argv)


def test_bad_flag_exits_2_with_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "driver", "serve", "--endpoint", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "expected unix://PATH or tcp://HOST:PORT" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "driver", "serve", "--mode", "both"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_node_and_windows_flags() -> None:
    cfg = _config(
        "--health-timeout",
        "2.5",
        "--windows-require-privacy",
        "false",
        "--windows-read-only",
        "warn",
        "--backend-workers",
        "8",
    )
    assert cfg.health_timeout == 2.5
    assert cfg.windows_require_privacy is False
    assert cfg.windows_read_only == "warn"
    assert cfg.backend_workers == 8
    from node.linux import LinuxPlatform
    from node.windows import WindowsSettings

    assert LinuxPlatform(cfg).probe_timeout == 2.5
    settings = WindowsSettings.from_config(cfg)
    assert settings.require_privacy is False
    assert settings.read_only == "warn"
    with pytest.raises(InvalidArgument):
        _config("--health-timeout", "0")


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://127.0.0.1:10000", "tcp://127.3.2.1:10000", "tcp://[::1]:10000", "tcp://localhost:1"],
)
def test_tcp_endpoints_on_loopback_are_served(endpoint: str) -> None:
    assert _config("--endpoint", endpoint).endpoint.is_loopback


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://0.0.0.0:10000",
        "tcp://[::]:10000",
        "tcp://10.0.0.5:10000",
        "tcp://192.168.1.1:10000",
        "tcp://[fe80::1%eth0]:10000",
        "tcp://node-1.example.com:10000",
        "tcp://[::ffff:10.0.0.1]:10000",
    ],
)
def test_tcp_endpoints_off_loopback_are_refused_at_start(endpoint: str) -> None:
    """The CSI API has no authentication: a tcp endpoint must be loopback."""
    with pytest.raises(InvalidArgument, match="loopback"):
        _config("--endpoint", endpoint)


async def test_the_server_refuses_a_non_loopback_config_before_binding() -> None:
    from driver.server import DriverServer

    server = DriverServer(Config(endpoint=parse_endpoint("tcp://0.0.0.0:1")), plugins=[])
    try:
        with pytest.raises(InvalidArgument, match="loopback"):
            await server.start()
        assert server.port is None
    finally:
        await server.server.stop(None)


def test_kubelet_dir_flag() -> None:
    assert _config().kubelet_dir == "/var/lib/kubelet"
    assert _config("--kubelet-dir", "/data/kubelet").kubelet_dir == "/data/kubelet"
    assert _config("--kubelet-dir", "D:\\kubelet").kubelet_dir == "D:\\kubelet"
    from node.windows import WindowsSettings

    assert WindowsSettings.from_config(_config("--kubelet-dir", "D:\\k")).kubelet_dir == "D:\\k"
    for bad in ("", "relative/kubelet", "kubelet", "C:", "/a\x00b"):
        with pytest.raises(InvalidArgument, match="--kubelet-dir"):
            _config("--kubelet-dir", bad)
