"""Windows errors, secrets, and the bounded PowerShell runner."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from driver.credentials import Credentials
from driver.errors import (
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from driver.source import Source
from node.powershell import (
    PowerShell,
    map_windows_error,
    parse_output,
    windows_error_code,
)
from node.windows import (
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    SCRIPTS,
    WindowsPlatform,
)
from tests.harness import wait_until
from tests.unit.windows.fake import (
    CMDLET,
    CREDS,
    PASSWORD,
    ROOT,
    FakeWindows,
    key,
    make_platform,
    runner,
    stage_request,
    staging_of,
)

# ------------------------------------------------------------------ errors and secrets


async def test_error_1219_is_a_failed_precondition(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    bobs = Credentials("bob", "bobs-password", "CORP")
    other = stage_request(
        platform,
        node,
        "o-1",
        source=Source("smb", "fileserver", None, "other"),
        subdir="x",
        credentials=bobs,
    )
    await platform.stage(other)
    mappings, links = dict(node.mappings), dict(node.links)
    alices = stage_request(platform, node)  # another share of the same server, alice
    with pytest.raises(FailedPrecondition) as info:
        await platform.stage(alices)
    assert "Windows error 1219" in info.value.message
    assert "every volume of one SMB server on a node must use the same user" in (info.value.message)
    # Nothing changed: bob's mapping and link stay, alice's staging dir is as kubelet made it.
    assert node.mappings == mappings
    assert node.links == links
    assert key(alices.staging_path) in node.dirs


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        # CSI: secrets that do not authenticate are UNAUTHENTICATED.
        ({"Code": 1326, "Message": "The user name or password is wrong."}, Unauthenticated, 1326),
        ({"HResult": 0x80070056 - (1 << 32), "Message": "bad password"}, Unauthenticated, 86),
        ({"FullyQualifiedErrorId": f"Windows System Error 1312,{CMDLET}"}, Unauthenticated, 1312),
        ({"Code": 1219, "Message": "Multiple connections"}, FailedPrecondition, 1219),
        ({"Code": 53, "Message": "The network path was not found."}, Unavailable, 53),
        ({"Code": 67, "Message": "The network name cannot be found."}, FailedPrecondition, 67),
        ({"Code": 64, "Message": "gone"}, Unavailable, 64),
        ({"Code": 1311, "Message": "no logon servers"}, Unavailable, 1311),
        ({"Code": 5, "Message": "Access is denied."}, PermissionDenied, 5),
        ({"NativeErrorCode": "1909", "Message": "locked"}, Unauthenticated, 1909),
    ],
)  # fmt: skip
async def test_windows_errors_are_mapped(
    platform: WindowsPlatform,
    node: FakeWindows,
    error: dict[str, Any],
    kind: type[DriverError],
    code: int,
) -> None:
    assert windows_error_code(error) == code
    node.errors[OP_NEW_MAPPING] = [error]
    with pytest.raises(kind) as info:
        await platform.stage(stage_request(platform, node))
    assert f"Windows error {code}" in info.value.message
    assert type(info.value) is kind


async def test_wrong_password_and_down_server(platform: WindowsPlatform, node: FakeWindows) -> None:
    wrong = Credentials("alice", "not-it", "CORP")
    with pytest.raises(Unauthenticated, match="1326"):
        await platform.stage(stage_request(platform, node, credentials=wrong))
    node.servers_down.add("fileserver")
    with pytest.raises(Unavailable, match="53"):
        await platform.stage(stage_request(platform, node))


def test_unknown_errors_are_internal_with_their_code() -> None:
    error = map_windows_error({"Code": 4242, "Message": "odd"}, what="map")
    assert isinstance(error, Internal)
    assert error.message == "map: Windows error 4242: odd"
    error = map_windows_error({"Type": "System.Exception"}, what="map")
    assert error.message == "map: System.Exception: no message"


async def test_the_password_never_leaks(platform: WindowsPlatform, node: FakeWindows) -> None:
    # A (hypothetical) error message and stderr that echo the password.
    node.errors[OP_NEW_MAPPING] = [
        {"Code": 1326, "Message": f"logon failure for password {PASSWORD}"},
        {"Code": 9999, "Message": f"strange {PASSWORD}"},
    ]
    node.raw[OP_NEW_MAPPING] = []
    messages: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(DriverError) as info:
                await platform.stage(stage_request(platform, node))
            messages.append(info.value.message)
        node.raw[OP_NEW_MAPPING] = [(1, b"", f"At line:3 char:1 {PASSWORD}\r\n".encode())]
        with pytest.raises(Internal) as info:
            await platform.stage(stage_request(platform, node))
        messages.append(info.value.message)
        await platform.stage(stage_request(platform, node))
        await platform.unstage("pvc-1", platform.check_path(staging_of("pvc-1"), what="s"))
    assert all("***" in m for m in messages), messages
    assert not [m for m in messages if PASSWORD in m]
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(platform)
    assert PASSWORD not in repr(CREDS)
    for script in SCRIPTS.values():
        assert PASSWORD not in script
    for call in node.calls:
        assert PASSWORD not in " ".join(call.argv)
        secret_env = {k for k, v in call.env.items() if PASSWORD in v}
        assert secret_env == ({"CSI_SMB_PASSWORD"} if call.op == OP_NEW_MAPPING else set())
    assert node.ops(OP_NEW_MAPPING) == [OP_NEW_MAPPING] * 4
    assert node.violations == []


async def test_at_most_three_powershell_processes(node: FakeWindows) -> None:
    ps = runner(node)
    node.hold = asyncio.Event()
    runs = [
        asyncio.ensure_future(
            ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})
        )
        for _ in range(10)
    ]
    await wait_until(lambda: node.alive == 3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert node.alive == 3
    assert len(node.calls) == 3
    node.hold.set()
    results = await asyncio.gather(*runs)
    assert all(r["exists"] is False for r in results)
    assert node.max_alive == 3
    assert node.alive == 0
    assert len(node.calls) == 10


async def test_stages_of_many_shares_stay_within_the_bound(
    platform: WindowsPlatform, node: FakeWindows
) -> None:
    requests = []
    for i in range(8):
        node.add_share(rf"\\fileserver\s{i}", "v")
        requests.append(
            stage_request(
                platform,
                node,
                f"v{i}",
                source=Source("smb", "fileserver", None, f"s{i}"),
                subdir="v",
            )
        )
    node.hold = asyncio.Event()
    staging = asyncio.gather(*(platform.stage(r) for r in requests))
    await wait_until(lambda: node.alive == 3)
    node.hold.set()
    await staging
    assert node.max_alive == 3
    assert len(node.mappings) == 8
    assert len(node.links) == 8


async def test_a_timed_out_powershell_is_killed(node: FakeWindows) -> None:
    ps = runner(node, timeout=0.02)
    node.hang.add(OP_GET_MAPPING)
    with pytest.raises(DeadlineExceeded, match="killed"):
        await ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})
    assert node.killed == [OP_GET_MAPPING]
    assert node.alive == 0


async def test_the_slot_is_held_until_the_killed_process_ends(node: FakeWindows) -> None:
    ps = runner(node, max_concurrent=1)
    node.hang.add(OP_GET_MAPPING)
    node.slow_kill = asyncio.Event()
    env = {"CSI_REMOTE_PATH": ROOT}
    stuck = asyncio.ensure_future(
        ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env=env, time_limit=0.01)
    )
    queued = asyncio.ensure_future(ps.run(OP_REMOVE_MAPPING, SCRIPTS[OP_REMOVE_MAPPING], env=env))
    await wait_until(lambda: node.killed)
    for _ in range(20):
        await asyncio.sleep(0)
    assert node.ops() == [OP_GET_MAPPING]  # the killed process has not ended yet
    node.slow_kill.set()
    with pytest.raises(DeadlineExceeded):
        await stuck
    assert (await queued) == {"removed": False}
    assert node.max_alive == 1


async def test_a_cancelled_caller_kills_its_powershell(node: FakeWindows) -> None:
    ps = runner(node)
    node.hang.add(OP_GET_MAPPING)
    task = asyncio.ensure_future(
        ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})
    )
    await wait_until(lambda: node.alive == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: node.alive == 0)
    assert node.killed == [OP_GET_MAPPING]


async def test_stage_timeout_is_deadline_exceeded(node: FakeWindows) -> None:
    platform = make_platform(node, map_timeout=0.02)
    node.hang.add(OP_NEW_MAPPING)
    with pytest.raises(DeadlineExceeded):
        await platform.stage(stage_request(platform, node))
    assert node.killed == [OP_NEW_MAPPING]


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "kind", "text"),
    [
        (0xC0000142, b"", b"", Unavailable, "0xC0000142"),
        (1, b"", b"The term 'New-SmbGlobalMapping' is not recognized", Internal, "not recognized"),
        (0, b"WARNING: something\r\n", b"", Internal, "WARNING"),
        (0, b"{not json\r\n", b"", Internal, "without an answer"),
    ],
)
async def test_answers_without_json(
    node: FakeWindows, returncode: int, stdout: bytes, stderr: bytes, kind: type, text: str
) -> None:
    node.raw[OP_GET_MAPPING] = [(returncode, stdout, stderr)]
    with pytest.raises(kind, match=text):
        await runner(node).run(
            OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT}
        )


def test_output_parsing_takes_the_last_json_line() -> None:
    out = '\ufeffnoise\r\n{"ok":true,"result":{"a":1}}\r\n\r\n'
    assert parse_output(out) == {"ok": True, "result": {"a": 1}}
    assert parse_output("[1,2]\n") is None


def test_environment_inputs(node: FakeWindows) -> None:
    ps = PowerShell(
        node.spawn, base_env={"PATH": "C:\\Windows", "CSI_SMB_PASSWORD": "stale", "csi_x": "y"}
    )
    env = ps.environment(OP_GET_MAPPING, {"CSI_REMOTE_PATH": ROOT})
    assert env == {"PATH": "C:\\Windows", "CSI_REMOTE_PATH": ROOT, "CSI_OP": OP_GET_MAPPING}
    with pytest.raises(ValueError, match="CSI_"):
        ps.environment(OP_GET_MAPPING, {"REMOTE": ROOT})
    with pytest.raises(InvalidArgument, match="NUL"):
        ps.environment(OP_GET_MAPPING, {"CSI_REMOTE_PATH": "a\x00b"})


async def test_missing_powershell_is_a_failed_precondition() -> None:
    async def absent(argv: Sequence[str], *, env: Mapping[str, str]) -> Any:
        raise FileNotFoundError(2, "not found", argv[0])

    ps = PowerShell(absent, executable="powershell.exe", base_env={})
    with pytest.raises(FailedPrecondition, match=r"powershell\.exe not found"):
        await ps.run(OP_GET_MAPPING, SCRIPTS[OP_GET_MAPPING], env={"CSI_REMOTE_PATH": ROOT})


async def test_the_real_spawner_passes_inputs_in_the_environment(tmp_path: Path) -> None:
    """The real asyncio subprocess path, with a stand-in executable that answers
    like our scripts (and ignores the PowerShell flags and script)."""
    fake_powershell = tmp_path / "powershell.exe"
    fake_powershell.write_text(
        "#!/bin/sh\n"
        'if [ "$CSI_OP" = hang ]; then exec sleep 30; fi\n'
        'printf \'noise\\r\\n{"ok":true,"result":{"op":"%s","remote":"%s","args":%d}}\\r\\n\' '
        '"$CSI_OP" "$CSI_REMOTE_PATH" "$#"\n'
    )
    fake_powershell.chmod(0o755)
    ps = PowerShell(executable=str(fake_powershell), base_env={"PATH": "/usr/bin:/bin"})
    result = await ps.run("probe", "$result = 1", env={"CSI_REMOTE_PATH": "srv/share"})
    assert result == {"op": "probe", "remote": "srv/share", "args": 6}
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceeded):
        await ps.run("hang", "$result = 1", time_limit=0.2)
    assert loop.time() - started < 5  # killed, not waited for
