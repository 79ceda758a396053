"""The ``csi-smb-nfs`` command: ``serve`` runs the driver, ``ctl`` talks to one."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from driver import log
from driver.config import add_serve_arguments, config_from_args
from driver.ctl import main as ctl
from driver.errors import InvalidArgument
from driver.version import package_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csi-smb-nfs",
        description="CSI driver for subdirectory volumes on SMB and NFS shares.",
    )
    parser.add_argument("--version", action="version", version=package_version())
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CSI driver")
    add_serve_arguments(serve)
    ctl.add_arguments(sub.add_parser("ctl", help="a CSI client for operators (JSON output)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ctl":
        return ctl.run(args)
    try:
        config = config_from_args(args)
    except InvalidArgument as exc:
        parser.error(exc.message)  # exits 2
    log.configure(config.log_format, config.verbosity)
    from driver.server import serve  # late: grpc import only when serving

    try:
        asyncio.run(serve(config))
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        log.get_logger("driver.cli").error(
            "driver failed", error=str(exc), error_type=type(exc).__name__
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
