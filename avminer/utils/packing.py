"""Versioned maps of named byte strings: ``version | n | (name length, name utf-8, u32 length, bytes)*``.

The one length-prefixed codec behind the selection policy's sketch packs
(:func:`avminer.selection.policy.pack_sketches`) and the fleet sketch messages
(:mod:`avminer.mining.fleet`). Each caller keeps its own version and field widths (``struct`` codes,
little-endian), so their bytes on the wire stay what they were.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping


class PackingError(ValueError):
    """Bytes that are not a pack of this version: another version, truncated, or malformed."""


def pack_named(version: int, items: Mapping[str, bytes], *, count: str = "B", name_length: str = "B") -> bytes:
    """Pack ``items`` (sorted by name) behind a version byte and their count.

    Args:
        version: the format version written first (u8).
        items: name -> bytes.
        count: ``struct`` code of the item count (``B`` u8, ``I`` u32, ...).
        name_length: ``struct`` code of each name's length.
    """
    parts = [struct.pack(f"<B{count}", version, len(items))]
    for name, raw in sorted(items.items()):
        key = name.encode()
        parts.append(struct.pack(f"<{name_length}", len(key)) + key + struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def unpack_named(data: bytes, version: int, *, count: str = "B", name_length: str = "B") -> dict[str, bytes]:
    """Inverse of :func:`pack_named` with the same version and widths.

    Raises:
        PackingError: another version (the message says to upgrade), truncated, or malformed.
    """
    head, name_len = struct.Struct(f"<B{count}"), struct.Struct(f"<{name_length}")
    try:
        found, n = head.unpack_from(data, 0)
        if found != version:
            raise PackingError(f"version {found} is not {version}; upgrade avminer")
        pos, out = head.size, {}
        for _ in range(n):
            (kl,) = name_len.unpack_from(data, pos)
            name = data[pos + name_len.size: pos + name_len.size + kl].decode()
            (size,) = struct.unpack_from("<I", data, pos + name_len.size + kl)
            start = pos + name_len.size + kl + 4
            if start + size > len(data):
                raise PackingError("truncated")
            out[name] = bytes(data[start: start + size])
            pos = start + size
    except (struct.error, UnicodeDecodeError) as exc:
        raise PackingError(f"malformed ({exc})") from exc
    return out
