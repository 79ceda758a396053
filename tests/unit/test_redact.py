from __future__ import annotations

import io
import json

import pytest
import structlog

from driver import log as driver_log
from driver.boundary import ErrorBoundary
from driver.csi import csi_pb2
from driver.errors import InvalidArgument
from driver.redact import REDACTED, redact, scrub, secret_values

PW = "Tr0ub4dor&3-secret"


def _request() -> csi_pb2.NodeStageVolumeRequest:
    return csi_pb2.NodeStageVolumeRequest(
        volume_id="v1#smb#srv#share#pvc#delete",
        staging_target_path="/staging",
        secrets={"username": "bob", "password": PW},
        volume_context={"source": "//srv/share", "token": PW, "apiPassword": PW},
        publish_context={"x": "y"},
    )


def test_redact_hides_secret_fields_and_password_like_keys() -> None:
    out = redact(_request())
    assert out["secrets"] == {"username": REDACTED, "password": REDACTED}
    assert out["volume_context"]["token"] == REDACTED
    assert out["volume_context"]["apiPassword"] == REDACTED
    assert out["volume_context"]["source"] == "//srv/share"
    assert PW not in json.dumps(out)


def test_secret_values_and_scrub() -> None:
    values = secret_values(_request())
    assert PW in values
    assert "bob" in values  # usernames of a secrets map count as secret too
    assert scrub(f"logon as bob with {PW} failed", values) == "logon as *** with *** failed"


def test_enum_and_nested_rendering() -> None:
    req = csi_pb2.CreateVolumeRequest(
        name="n",
        volume_capabilities=[
            csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=["vers=3"]),
                access_mode=csi_pb2.VolumeCapability.AccessMode(mode=5),
            )
        ],
        secrets={"password": PW},
    )
    out = redact(req)
    assert out["volume_capabilities"][0]["access_mode"]["mode"] == "MULTI_NODE_MULTI_WRITER"
    assert out["secrets"] == {"password": REDACTED}


class _Ctx:
    def __init__(self) -> None:
        self.aborted: tuple[object, str] | None = None

    async def abort(self, code: object, message: str) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_interceptor_log_line_has_no_secret(fmt: str) -> None:
    stream = io.StringIO()
    driver_log.configure(fmt, 5, stream=stream)
    try:
        boundary = ErrorBoundary()

        async def handler(request: object, context: object) -> object:
            raise InvalidArgument(f"could not log on with password {PW}")

        wrapped = boundary._wrap("NodeStageVolume", handler)
        ctx = _Ctx()
        with pytest.raises(RuntimeError, match="aborted"):
            await wrapped(_request(), ctx)  # type: ignore[arg-type]
        assert ctx.aborted is not None
        assert PW not in ctx.aborted[1]
        assert "***" in ctx.aborted[1]
        text = stream.getvalue()
        assert "NodeStageVolume" in text
        assert PW not in text
    finally:
        driver_log.configure("json", 2)
        structlog.contextvars.clear_contextvars()
