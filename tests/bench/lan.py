"""CreateVolume over an emulated LAN: a veth pair with ``tc netem`` delay.

On loopback a round trip to the server costs next to nothing, so every
microsecond of the driver's own CPU shows.  In production the file server is
across a network and its round trip dominates.  These rows put the servers
behind an emulated LAN and compare the driver with the raw client there:

* two private network namespaces, ``server`` (10.231.0.1) and ``client``
  (10.231.0.2), joined by a veth pair with ``netem delay 250us`` on both
  ends (0.25 ms each way, 0.5 ms round trip); only namespace addresses;
* Samba in the server namespace; nfs-ganesha (NFSv4) in a namespace of its
  own (``GaneshaServer``'s v3 shape) that gets the server end of a second pair;
* the raw client and the driver (``serve --mode controller`` under
  ``nsenter``) in the client namespace.

The host kernel of these machines has no ``sch_netem`` (``tc`` answers
"Specified qdisc kind is unknown"), so on the host :func:`main` boots the
user-mode Linux guest (its kernel has the module) and runs the rows there;
UML's own costs (every syscall traps to the host) make CPU weigh more than
on a real node, so the ratio is an upper bound of what a LAN shows.

Rows, each in a fresh directory, after a warm-up: raw mkdir and CreateVolume
at concurrency 1 (latency) and 16 (throughput).  Target (issue 18):
CreateVolume c=1 <= 1.2x the raw mkdir, for SMB and NFS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.bench.common import (
    bench_in_guest,
    create_request,
    driver_running,
    find_row,
    in_guest,
    table,
    timed,
    timed_in_threads,
    write,
)

NAME = "lan"
DELAY = "250us"
SERVER_ADDR, CLIENT_ADDR = "10.231.0.1", "10.231.0.2"
OPS = {1: 200, 16: 400}
ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Lan:
    """A client namespace joined to a server namespace by a delayed veth pair."""

    def __init__(self, server_ns: str | None = None, tag: str = "a") -> None:
        self._holders: list[subprocess.Popen[bytes]] = []
        self._server_ns = server_ns
        self._tag = tag
        self.client_ns = ""

    def _holder(self) -> str:
        proc = subprocess.Popen(["unshare", "-n", "sleep", "infinity"], stdin=subprocess.DEVNULL)
        self._holders.append(proc)
        path = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                raise RuntimeError("unshare -n did not make a namespace")
            time.sleep(0.01)
        return path

    @property
    def server_ns(self) -> str:
        assert self._server_ns is not None
        return self._server_ns

    def __enter__(self) -> Lan:
        _run("modprobe", "veth")
        _run("modprobe", "sch_netem")
        if self._server_ns is None:
            self._server_ns = self._holder()
        self.client_ns = self._holder()
        cli, srv = f"vc{self._tag}", f"vs{self._tag}"
        in_client = ["nsenter", f"--net={self.client_ns}"]
        in_server = ["nsenter", f"--net={self.server_ns}"]
        server_pid = self.server_ns.split("/")[2]
        # Made inside the client namespace with its peer sent straight to the
        # server's: the host's own namespace never sees either end.
        _run(
            *in_client,
            "ip",
            "link",
            "add",
            cli,
            "type",
            "veth",
            "peer",
            "name",
            srv,
            "netns",
            server_pid,
        )
        for prefix, dev, addr in ((in_client, cli, CLIENT_ADDR), (in_server, srv, SERVER_ADDR)):
            _run(*prefix, "ip", "link", "set", "lo", "up")
            _run(*prefix, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            _run(*prefix, "ip", "link", "set", dev, "up")
            _run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", DELAY)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._holders:
            proc.kill()
            proc.wait()

    def client(self) -> contextlib.AbstractContextManager[None]:
        from tests.servers.host import enter_netns

        return enter_netns(self.client_ns)

    def rtt_ms(self) -> float:
        """A TCP connect's round trip, as a check that the delay is there."""
        import socket

        with self.client(), socket.socket() as probe:
            probe.settimeout(2)
            t0 = time.perf_counter()
            with contextlib.suppress(OSError):
                probe.connect((SERVER_ADDR, 9))  # refused: one SYN, one RST
            return (time.perf_counter() - t0) * 1000


async def _driver_rows(
    endpoint: str, params: dict[str, str], secrets_: dict[str, str], flags: list[str], tag: str
) -> list[dict[str, Any]]:
    from driver.csi import csi_pb2
    from tests.bench.lean_client import LeanChannel

    rows = []
    async with LeanChannel(endpoint) as channel:

        async def create(name: str, row: str) -> None:
            request = create_request(name, params | {"subDir": f"{row}/{name}"}, secrets_, flags)
            await channel.unary(
                "/csi.v1.Controller/CreateVolume", request, csi_pb2.CreateVolumeResponse
            )

        await create("warm", f"{tag}-warm")
        for c, n in OPS.items():
            row = f"{tag}-drv-c{c}"
            rows.append(
                {
                    "protocol": tag,
                    "client": "driver CreateVolume",
                    "concurrency": c,
                    **await timed(n, c, lambda i, row=row: create(f"{row}-{i:04d}", row)),
                }
            )
    return rows


def _smb_rows(lan: Lan, tmp: Path) -> list[dict[str, Any]]:
    import smbclient

    from tests.servers.samba import SambaServer, Share

    user, password = "csibench", secrets.token_urlsafe(16)
    samba = SambaServer(
        tmp / "samba",
        0,
        {user: password},
        [Share("csi")],
        options={"interfaces": f"127.0.0.1 {SERVER_ADDR}"},
    )
    with lan_server(lan):
        samba.start()
    rows: list[dict[str, Any]] = []
    try:
        cache: dict[str, Any] = {}
        kw = {"username": user, "password": password, "port": samba.port, "connection_cache": cache}
        root = rf"\\{SERVER_ADDR}\csi"
        with lan.client():
            smbclient.mkdir(rf"{root}\raw-warm", **kw)
            for c, n in OPS.items():
                smbclient.mkdir(rf"{root}\raw-c{c}", **kw)
                rows.append(
                    {
                        "protocol": "smb",
                        "client": "raw smbclient.mkdir",
                        "concurrency": c,
                        **timed_in_threads(
                            n, c, lambda i, c=c: smbclient.mkdir(rf"{root}\raw-c{c}\{i:04d}", **kw)
                        ),
                    }
                )
            smbclient.reset_connection_cache(connection_cache=cache)
        with driver_running(tmp, prefix=["nsenter", f"--net={lan.client_ns}"]) as (_, endpoint):
            rows += asyncio.run(
                _driver_rows(
                    endpoint,
                    {"source": f"//{SERVER_ADDR}:{samba.port}/csi"},
                    {"username": user, "password": password},
                    [],
                    "smb",
                )
            )
    finally:
        samba.stop()
        samba.cleanup()
    return rows


@contextlib.contextmanager
def lan_server(lan: Lan) -> Iterator[None]:
    from tests.servers.host import enter_netns

    with enter_netns(lan.server_ns):
        yield


def _nfs_rows(tmp: Path) -> list[dict[str, Any]]:
    from controller.nfs.backend import NfsBackend
    from tests.servers.ganesha import GaneshaServer

    rows: list[dict[str, Any]] = []
    with GaneshaServer(tmp / "ganesha", versions=("3", "4")) as server:
        assert server.netns_path is not None
        with Lan(server.netns_path, tag="n") as lan:
            pseudo = server.pseudo_path

            async def raw() -> list[dict[str, Any]]:
                backend = NfsBackend(SERVER_ADDR, server.port, pseudo, "4", 30.0)
                out = []
                try:
                    await backend.mkdir("raw-warm")
                    for c, n in OPS.items():
                        await backend.mkdir(f"raw-c{c}")
                        out.append(
                            {
                                "protocol": "nfs4",
                                "client": "raw libnfs mkdir",
                                "concurrency": c,
                                **await timed(
                                    n, c, lambda i, c=c: backend.mkdir(f"raw-c{c}/{i:04d}")
                                ),
                            }
                        )
                finally:
                    await backend.aclose()
                return out

            with lan.client():
                rows += asyncio.run(raw())
            with driver_running(tmp, prefix=["nsenter", f"--net={lan.client_ns}"]) as (_, endpoint):
                rows += asyncio.run(
                    _driver_rows(
                        endpoint,
                        {"source": f"nfs://{SERVER_ADDR}:{server.port}{pseudo}"},
                        {},
                        ["nfsvers=4"],
                        "nfs4",
                    )
                )
    return rows


def _measure() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-lan-"))
    tmp.chmod(0o755)  # smbd reaches the share as the connecting user
    results: dict[str, Any] = {"delay_each_way": DELAY, "ops": OPS}
    try:
        with Lan(tag="s") as lan:
            results["tcp_connect_rtt_ms"] = lan.rtt_ms()
            rows = _smb_rows(lan, tmp)
        rows += _nfs_rows(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios: dict[str, Any] = {}
    for proto in ("smb", "nfs4"):

        def row(client: str, c: int, proto: str = proto) -> dict[str, Any]:
            return find_row(rows, client, c, protocol=proto)

        ratios[proto] = {
            "create_c1_median_over_raw": row("driver", 1)["median_ms"] / row("raw", 1)["median_ms"],
            "create_c16_throughput_over_raw": row("driver", 16)["per_second"]
            / row("raw", 16)["per_second"],
        }
    results |= {"rows": rows, "ratios": ratios, "loadavg": os.getloadavg()}
    print(
        f"CreateVolume over an emulated LAN (veth + netem {DELAY} each way, TCP connect RTT "
        f"{results['tcp_connect_rtt_ms']:.2f} ms; UML guest)"
    )
    print(
        table(
            rows,
            ["protocol", "client", "concurrency", "median_ms", "p99_ms", "per_second", "errors"],
        )
    )
    for proto, r in ratios.items():
        print(
            f"  {proto}: CreateVolume c=1 {r['create_c1_median_over_raw']:.2f}x raw"
            f" (target <= 1.2), c=16 throughput {r['create_c16_throughput_over_raw']:.2f}x raw"
        )
    write(NAME, results)
    return results


def main() -> dict[str, Any]:
    if in_guest():
        return _measure()
    return bench_in_guest(
        NAME, "LAN benchmark", table_from="CreateVolume over", table_lines=2 + 8 + 2, timeout=1200
    )


if __name__ == "__main__":
    main()
