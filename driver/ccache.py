"""Reading a Kerberos credential cache (MIT ``FILE:`` format, versions 3 and 4).

The driver only needs what is in the clear: whose cache it is and when its
tickets end.  Operators hand the node a cache in the ``krb5ccache`` (or
upstream's ``krb5cc_<uid>``) secret key; before mounting with it the node
checks that it holds a ticket-granting ticket that has not expired, and its
ticket keeper uses the end and renew-until times to decide when to refresh.
Keys and ticket bodies are skipped, never kept.

Layout (big-endian): u16 version, a v4 header (u16 length + tags), the
default principal, then credentials until the end of the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from driver.errors import InvalidArgument

_V3, _V4 = 0x0503, 0x0504
_CONFIG_REALM = "X-CACHECONF:"  # MIT's configuration entries, not tickets
# Far more than any real cache holds: bounds the work on a hostile secret.
_MAX_ITEMS = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    components: tuple[str, ...]
    realm: str

    def __str__(self) -> str:
        return "/".join(self.components) + (f"@{self.realm}" if self.realm else "")


@dataclass(frozen=True, slots=True)
class Ticket:
    server: Principal
    start: int  # seconds since the epoch (starttime, or authtime when unset)
    end: int
    renew_till: int  # 0: not renewable

    @property
    def is_tgt(self) -> bool:
        return len(self.server.components) == 2 and self.server.components[0] == "krbtgt"


@dataclass(frozen=True, slots=True)
class CCache:
    principal: Principal
    tickets: tuple[Ticket, ...]

    def tgt(self) -> Ticket | None:
        """The ticket-granting ticket of the principal's own realm (else any)."""
        tgts = [t for t in self.tickets if t.is_tgt]
        own = [t for t in tgts if t.server.components[1] == self.principal.realm]
        best = own or tgts
        return best[0] if best else None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise InvalidArgument("credential cache: truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def octets(self) -> bytes:
        return self.take(self.u32())

    def count(self) -> int:
        n = self.u32()
        if n > _MAX_ITEMS:
            raise InvalidArgument("credential cache: implausible item count")
        return n

    def principal(self) -> Principal:
        self.u32()  # name type
        n = self.count()
        realm = self.octets().decode("utf-8", errors="replace")
        parts = tuple(self.octets().decode("utf-8", errors="replace") for _ in range(n))
        return Principal(parts, realm)


def parse_ccache(data: bytes) -> CCache:
    """Parse a ``FILE:`` credential cache; InvalidArgument when it is not one."""
    r = _Reader(data)
    version = r.u16() if len(data) >= 2 else 0
    if version not in (_V3, _V4):
        raise InvalidArgument(
            "credential cache: not an MIT FILE cache of version 3 or 4 "
            "(make it with kinit, or give a keytab instead)"
        )
    if version == _V4:
        r.take(r.u16())  # header tags (KDC time offset): not needed
    principal = r.principal()
    tickets: list[Ticket] = []
    while not r.at_end:
        if len(tickets) >= _MAX_ITEMS:
            raise InvalidArgument("credential cache: too many entries")
        r.principal()  # client
        server = r.principal()
        r.u16()  # enctype
        if version == _V3:
            r.u16()  # repeated in version 3
        r.octets()  # session key: skipped
        authtime, starttime, endtime, renew_till = (r.u32() for _ in range(4))
        r.u8()  # is_skey
        r.u32()  # ticket flags
        for _ in range(r.count()):  # addresses
            r.u16()
            r.octets()
        for _ in range(r.count()):  # authorization data
            r.u16()
            r.octets()
        r.octets()  # ticket
        r.octets()  # second ticket
        if server.realm == _CONFIG_REALM:
            continue
        tickets.append(Ticket(server, starttime or authtime, endtime, renew_till))
    return CCache(principal, tuple(tickets))
