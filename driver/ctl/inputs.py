"""What ``ctl`` commands read: parameter and secret files, KEY=VALUE flags,
the volume capability flags.

Secrets only ever come from a file: a flag would put the password in the
process list and in shell history.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from driver.errors import InvalidArgument

ACCESS_MODES = (
    "SINGLE_NODE_WRITER",
    "SINGLE_NODE_READER_ONLY",
    "MULTI_NODE_READER_ONLY",
    "MULTI_NODE_SINGLE_WRITER",
    "MULTI_NODE_MULTI_WRITER",
    "SINGLE_NODE_SINGLE_WRITER",
    "SINGLE_NODE_MULTI_WRITER",
)


def read_map_file(path: str, *, what: str) -> dict[str, str]:
    """A JSON object or ``key=value`` lines (``#`` comments) → dict."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"{what} {path}: {exc.strerror}") from None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{what} {path}: not valid JSON (line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"{what} {path}: expected a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()  # noqa: PLW2901 - normalising the loop's own line
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"{what} {path}: line {number} is not key=value")
        out[key.strip()] = value
    return out


def pairs(items: list[str] | None, *, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def merged_map(
    path: str | None, items: list[str] | None, *, file_what: str, flag: str
) -> dict[str, str]:
    """A map from a file (if given), then ``KEY=VALUE`` flags on top of it."""
    out = read_map_file(path, what=file_what) if path else {}
    out.update(pairs(items, what=flag))
    return out


def params_of(args: argparse.Namespace) -> dict[str, str]:
    return merged_map(args.params_file, args.param, file_what="params file", flag="--param")


def secrets_of(args: argparse.Namespace) -> dict[str, str]:
    if not args.secrets_file:
        return {}
    return read_map_file(args.secrets_file, what="secrets file")


def capability(args: argparse.Namespace) -> Any:
    from driver.csi import csi_pb2

    cap = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=args.mount_option or []),
        access_mode=csi_pb2.VolumeCapability.AccessMode(
            mode=csi_pb2.VolumeCapability.AccessMode.Mode.Value(args.access_mode)
        ),
    )
    if args.mount_group:
        cap.mount.volume_mount_group = args.mount_group
    return cap


def add_map_args(
    parser: argparse.ArgumentParser, flag: str, file_flag: str, *, item: str, whole: str
) -> None:
    """``flag KEY=VALUE`` (repeatable) and ``file_flag PATH``: the pair
    :func:`merged_map` reads."""
    parser.add_argument(flag, action="append", metavar="KEY=VALUE", help=f"{item} (repeatable)")
    parser.add_argument(file_flag, help=f"{whole} as JSON or key=value lines")


def add_volume_args(parser: argparse.ArgumentParser, *, params: bool, secrets: bool) -> None:
    if params:
        add_map_args(
            parser, "--param", "--params-file", item="a StorageClass parameter", whole="parameters"
        )
    if secrets:
        parser.add_argument(
            "--secrets-file", help="secrets (username, password, domain) as JSON or key=value lines"
        )


def add_capability_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mount-option",
        action="append",
        metavar="OPT",
        help="a mount option, as StorageClass mountOptions (repeatable)",
    )
    parser.add_argument("--access-mode", choices=ACCESS_MODES, default="MULTI_NODE_MULTI_WRITER")
    parser.add_argument("--mount-group", default="", help="volume mount group (fsGroup)")
