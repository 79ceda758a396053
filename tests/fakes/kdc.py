"""A fake KDC behind ``kinit``/``kvno``, and an MIT credential cache writer.

``FakeKdc.run`` answers the commands the node's ticket keeper runs the way
MIT's tools would: ``kinit -k`` writes a cache whose ticket-granting ticket
lasts ``lifetime`` from the fake clock, ``kinit -R`` renews the cache it is
given, ``kvno`` adds a service ticket.  It keeps state (who is refused,
whether the KDC is down) and records every call with its environment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from driver.ccache import parse_ccache
from node.runner import CommandResult
from tests.secret_scan import register_secret

# MIT's texts (LC_ALL=C) for the situations the fake can play.
UNREACHABLE = "kinit: Cannot contact any KDC for realm 'R' while getting initial credentials"
REFUSED = "kinit: Preauthentication failed while getting initial credentials"
# Something a KDC could say that the driver does not know: it must never be quoted.
UNKNOWN_TEXT = register_secret("kinit: zz-unheard-of-reason-7f3a while getting credentials")


def _octets(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _principal(name: str) -> bytes:
    user, _, realm = name.rpartition("@")
    parts = user.split("/")
    out = struct.pack(">II", 1, len(parts)) + _octets(realm.encode())
    return out + b"".join(_octets(p.encode()) for p in parts)


def make_ccache(owner: str, tickets: list[tuple[str, int, int, int]], *, version: int = 4) -> bytes:
    """An MIT FILE cache: ``tickets`` = (server, start, end, renew_till)."""
    out = struct.pack(">H", 0x0500 | version)
    if version == 4:
        out += struct.pack(">H", 12) + struct.pack(">HH", 1, 8) + b"\0" * 8
    out += _principal(owner)
    for server, start, end, renew in tickets:
        out += _principal(owner) + _principal(server)
        out += struct.pack(">H", 18) + (struct.pack(">H", 18) if version == 3 else b"")
        out += _octets(b"k" * 32)
        out += struct.pack(">IIIIBI", start, start, end, renew, 0, 0)
        out += struct.pack(">I", 0) + struct.pack(">I", 0) + _octets(b"T" * 40) + _octets(b"")
    return out


@dataclass
class FakeKdc:
    """kinit/kvno as a KDC would answer them; records every call."""

    clock: list[float]
    lifetime: int = 1000
    renewable: int = 0  # seconds of renew-until beyond the start (0: not renewable)
    principal: str = "u@R"
    refuse: str | None = None  # stderr of a failing kinit (a wrong key, an unknown reason)
    down: bool = False  # no KDC answers
    calls: list[tuple[tuple[str, ...], dict[str, str] | None]] = field(default_factory=list)

    def tools(self) -> list[str]:
        return [argv[0] for argv, _ in self.calls]

    async def run(
        self,
        argv: object,
        *,
        timeout: float,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)  # type: ignore[attr-defined]
        self.calls.append((args, env))
        if self.down:
            return CommandResult(args, 1, "", UNREACHABLE.replace("kinit", args[0]))
        if args[0] == "kinit" and self.refuse:
            return CommandResult(args, 1, "", self.refuse)
        cc = Path(args[args.index("-c") + 1].removeprefix("FILE:"))
        now = int(self.clock[0])
        if args[0] == "kinit" and "-R" in args:
            tgt = parse_ccache(cc.read_bytes()).tgt()
            if tgt is None or tgt.end <= now or tgt.renew_till <= now:
                return CommandResult(args, 1, "", "kinit: Ticket expired while renewing")
            end = min(now + self.lifetime, tgt.renew_till)
            tickets = [(f"krbtgt/{self._realm}@{self._realm}", now, end, tgt.renew_till)]
            cc.write_bytes(make_ccache(self.principal, tickets))
        elif args[0] == "kinit":
            renew = now + self.renewable if self.renewable else 0
            tickets = [(f"krbtgt/{self._realm}@{self._realm}", now, now + self.lifetime, renew)]
            cc.write_bytes(make_ccache(self.principal, tickets))
        elif args[0] == "kvno":
            cache = parse_ccache(cc.read_bytes())
            tgt = cache.tgt()
            if tgt is None or tgt.end <= now:
                return CommandResult(args, 1, "", "kvno: Ticket expired while getting credentials")
            ticket = (args[-1].rstrip("@") + f"@{self._realm}", now, tgt.end, tgt.renew_till)
            old = [(str(t.server), t.start, t.end, t.renew_till) for t in cache.tickets]
            cc.write_bytes(make_ccache(str(cache.principal), [*old, ticket]))
        return CommandResult(args, 0, "", "")

    @property
    def _realm(self) -> str:
        return self.principal.rpartition("@")[2]
