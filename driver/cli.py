"""The ``csi-smb-nfs`` command: ``serve`` runs the driver, ``ctl`` talks to one."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from driver import log
from driver.config import add_serve_arguments, config_from_args
from driver.errors import InvalidArgument
from driver.version import package_version


def build_parser(*, ctl_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line.  ``ctl_commands=False`` leaves ``ctl``'s own
    arguments out: ``serve`` never parses them, and their modules (about a
    tenth of the driver's start-up imports) are not loaded then."""
    parser = argparse.ArgumentParser(
        prog="csi-smb-nfs",
        description="CSI driver for subdirectory volumes on SMB and NFS shares.",
    )
    parser.add_argument("--version", action="version", version=package_version())
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CSI driver")
    add_serve_arguments(serve)
    ctl_parser = sub.add_parser("ctl", help="a CSI client for operators (JSON output)")
    if ctl_commands:
        from driver.ctl import main as ctl

        ctl.add_arguments(ctl_parser)
    return parser


def parse(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    # Only `serve ...` may skip the ctl commands; --help and ctl need them.
    parser = build_parser(ctl_commands=list(argv[:1]) != ["serve"])
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "ctl":
        from driver.ctl import main as ctl

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
