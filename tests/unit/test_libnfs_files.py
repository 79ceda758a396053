"""The libnfs pieces that snapshots and clones added: SETATTR encoding and the
raw READLINK reply parser (layouts measured with gcc against libnfs 4.0)."""

from __future__ import annotations

import ctypes

import pytest

from controller.nfs import structs, xdr


def test_fattr4_mode_only() -> None:
    mask, values = xdr.encode_fattr4(mode=0o2750)
    assert mask == (0, 1 << (xdr.FATTR4_MODE - 32))
    assert values == (0o2750).to_bytes(4, "big")


def test_fattr4_everything_in_attribute_order() -> None:
    mask, values = xdr.encode_fattr4(
        mode=0o644, owner="1000", group="10", atime_ns=5_000_000_001, mtime_ns=7_123_456_789
    )
    bits = [xdr.FATTR4_MODE, xdr.FATTR4_OWNER, xdr.FATTR4_OWNER_GROUP]
    bits += [xdr.FATTR4_TIME_ACCESS_SET, xdr.FATTR4_TIME_MODIFY_SET]
    assert mask == (0, sum(1 << (b - 32) for b in bits))
    expected = (0o644).to_bytes(4, "big")
    expected += (4).to_bytes(4, "big") + b"1000"
    expected += (2).to_bytes(4, "big") + b"10\0\0"  # padded to 4
    expected += (1).to_bytes(4, "big") + (5).to_bytes(8, "big") + (1).to_bytes(4, "big")
    expected += (1).to_bytes(4, "big") + (7).to_bytes(8, "big") + (123_456_789).to_bytes(4, "big")
    assert values == expected


def _reply(op: int, status: int, text: bytes) -> tuple[int, list[object]]:
    """A COMPOUND4res in memory: PUTROOTFH, then ``op`` with ``text``."""
    link = ctypes.create_string_buffer(text, len(text))  # not NUL-terminated, as libnfs has it
    array = ctypes.create_string_buffer(2 * structs.RESOP4_SIZE)
    base = ctypes.addressof(array)
    ctypes.c_int32.from_address(base).value = xdr.OP_PUTROOTFH
    last = base + structs.RESOP4_SIZE
    ctypes.c_int32.from_address(last).value = op
    result = last + structs.RESOP4_UNION_OFFSET
    ctypes.c_int32.from_address(result).value = status
    ctypes.c_uint32.from_address(result + structs.READLINK4_LINK_OFFSET).value = len(text)
    ctypes.c_void_p.from_address(
        result + structs.READLINK4_LINK_OFFSET + 8
    ).value = ctypes.addressof(link)
    res = ctypes.create_string_buffer(40)
    ctypes.c_uint32.from_address(ctypes.addressof(res) + structs.RES_ARRAY_LEN_OFFSET).value = 2
    ctypes.c_void_p.from_address(ctypes.addressof(res) + structs.RES_ARRAY_VAL_OFFSET).value = base
    return ctypes.addressof(res), [link, array, res]


def test_readlink_result_takes_the_length_not_a_nul() -> None:
    data, keep = _reply(xdr.OP_READLINK, xdr.NFS4_OK, b"../target")
    assert structs.readlink_result(data) == b"../target"
    assert keep


@pytest.mark.parametrize(("op", "status"), [(xdr.OP_SETATTR, 0), (xdr.OP_READLINK, 2)])
def test_readlink_result_refuses_other_replies(op: int, status: int) -> None:
    data, keep = _reply(op, status, b"x")
    assert structs.readlink_result(data) is None
    assert keep
