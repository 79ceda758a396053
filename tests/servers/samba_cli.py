"""One Samba instance from the command line (tests/servers/samba.py).

Usage::

    python -m tests.servers.samba_cli --dir ./run/samba --port 4450

starts an instance with the share ``csi`` and one user, prints the connection
facts as one JSON line (the password is written to a 0600 file whose path is
in the line, never printed), and stays in the foreground until SIGINT or
SIGTERM; it then stops smbd and removes the state it made (share data stays).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
from pathlib import Path

from tests.servers.samba import SambaError, SambaServer, Share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.servers.samba_cli", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dir", type=Path, required=True, help="instance directory (state, shares, password file)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on the host (0: pick a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    parser.add_argument("--user", default="csitest1")
    parser.add_argument("--share", default="csi")
    args = parser.parse_args(argv)

    root: Path = args.dir.absolute()
    root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    password_file = root / "password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password)

    server = SambaServer(
        root, args.port, {args.user: password}, [Share(args.share)], host=args.host
    )
    try:
        server.start()
    except SambaError as err:
        password_file.unlink(missing_ok=True)
        print(err, file=sys.stderr)
        return 1

    facts = {
        "host": server.host,
        "port": server.port,
        "share": args.share,
        "username": args.user,
        "password_file": str(password_file),
        "share_path": str(server.share_path(args.share)),
        "pid": server.pid,
    }
    print(json.dumps(facts), flush=True)

    # Block the signals only now: smbd must not inherit a blocked mask.
    wanted = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    code = 0
    try:
        while server.running:
            got = signal.sigtimedwait(wanted, 1.0)
            if got is not None and got.si_signo != signal.SIGCHLD:
                break
        else:
            print("smbd exited on its own; see " + str(server.log_path), file=sys.stderr)
            code = 1
    finally:
        server.cleanup()
        password_file.unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
