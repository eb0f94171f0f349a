"""Bounded reads of untrusted inputs: files named by URIs, images, zip archives, text for logs.

Everything a message, a label file or an HTTP request names is read through here, so the limits are
enforced in one place and *before* anything large is allocated:

- :func:`read_local_file` opens a path only under allowed roots (symlinks resolved first), refuses
  anything that is not a regular file (``/dev/zero``, a FIFO, a socket) without blocking on it, and
  reads at most ``max_bytes``;
- :func:`check_pixels` refuses a declared size before anything of that size is allocated (images
  themselves are opened by :func:`avminer.images.open_image`, with the same rule);
- :func:`read_zip_member` trusts neither a member's declared size nor its compression ratio;
- :func:`printable` escapes control characters so an id cannot forge log lines or report rows.

Ground floor: imports nothing of avminer but :mod:`avminer.errors`.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from avminer.errors import AvminerError

_CHUNK = 1 << 20
READ_TIMEOUT_S = 30.0
"""A single local read that takes longer than this (a hung network mount) is abandoned."""

class InputRefusedError(AvminerError):
    """Untrusted input was refused before it was read or decoded.

    Attributes:
        oversize: True when a size limit (bytes, pixels, members) was the reason.
    """

    def __init__(self, message: str, oversize: bool = False) -> None:
        self.oversize = oversize
        super().__init__(message)


def _under(path: Path, roots: Iterable[str | Path]) -> bool:
    for root in roots:
        base = Path(root).expanduser().resolve()
        if path == base or base in path.parents:
            return True
    return False


def path_of_file_uri(uri: str) -> Path:
    """The local path a ``file://`` URI names (no host part allowed).

    Raises:
        InputRefusedError: another scheme, a remote host, or a relative path.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise InputRefusedError(f"not a file:// URI: {printable(uri)}")
    if parsed.netloc not in ("", "localhost"):
        raise InputRefusedError(f"file:// URI names a host ({printable(parsed.netloc)}); only local paths are read")
    path = unquote(parsed.path)
    if "\x00" in path or not path.startswith("/"):
        raise InputRefusedError(f"file:// URI has no absolute path: {printable(uri)}")
    return Path(path)


def read_local_file(
    path: str | Path, max_bytes: int, roots: Sequence[str | Path] | None = None, timeout_s: float = READ_TIMEOUT_S
) -> bytes:
    """Read a regular file of at most ``max_bytes`` that lies under one of ``roots``.

    Args:
        path: the file; symlinks are resolved before the roots are checked.
        max_bytes: the largest size accepted (checked on the inode before reading, then while reading).
        roots: directories the file must lie under; None: anywhere (trusted callers only).
        timeout_s: abandon a read that stalls longer than this in total.

    Raises:
        InputRefusedError: outside the roots, not a regular file, too large or too slow.
        OSError: the file cannot be opened (missing, permissions).
    """
    real = Path(os.path.realpath(Path(path).expanduser()))
    if roots is not None and not _under(real, roots):
        raise InputRefusedError(f"{printable(str(path))} is outside the allowed directories")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it anyway.
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefusedError(f"{printable(str(path))} is not a regular file")
        if st.st_size > max_bytes:
            raise InputRefusedError(f"{printable(str(path))} has {st.st_size} bytes > limit {max_bytes}", True)
        deadline = time.monotonic() + timeout_s
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # the file grew after the fstat
                raise InputRefusedError(f"{printable(str(path))} grew past the limit {max_bytes}", True)
            parts.append(chunk)
            if time.monotonic() > deadline:
                raise InputRefusedError(f"reading {printable(str(path))} took longer than {timeout_s:g} s")
        return b"".join(parts)
    finally:
        os.close(fd)


def read_file_uri(uri: str, max_bytes: int, roots: Sequence[str | Path] | None) -> bytes:
    """:func:`read_local_file` of a ``file://`` URI."""
    return read_local_file(path_of_file_uri(uri), max_bytes, roots)


def check_pixels(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Refuse a declared size before anything of that size is allocated.

    Raises:
        InputRefusedError: non-positive sides (not oversize) or more than ``max_pixels`` (oversize).
    """
    if width <= 0 or height <= 0:
        raise InputRefusedError(f"{what} declares {width}x{height}")
    if width * height > max_pixels:
        raise InputRefusedError(f"{what} is {width}x{height} = {width * height} pixels > limit {max_pixels}", True)


def read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """A zip member's bytes, refused once more than ``max_bytes`` come out, whatever it declares.

    Raises:
        InputRefusedError: declared or actual uncompressed size over ``max_bytes``.
    """
    if info.file_size > max_bytes:
        raise InputRefusedError(f"zip member {printable(info.filename)} declares {info.file_size} bytes > "
                                f"limit {max_bytes}", True)
    out = bytearray()
    with archive.open(info) as fh:
        while True:
            chunk = fh.read(min(_CHUNK, max_bytes + 1 - len(out)))
            if not chunk:
                break
            out += chunk
            if len(out) > max_bytes:
                raise InputRefusedError(f"zip member {printable(info.filename)} inflates past {max_bytes} bytes "
                                        "(its header lies)", True)
    return bytes(out)


def check_zip(archive: zipfile.ZipFile, max_members: int, max_total_bytes: int) -> list[zipfile.ZipInfo]:
    """The archive's members, after checking their count and declared total size.

    Raises:
        InputRefusedError: too many members, or a declared total over ``max_total_bytes``.
    """
    infos = archive.infolist()
    if len(infos) > max_members:
        raise InputRefusedError(f"zip holds {len(infos)} members > limit {max_members}", True)
    total = sum(i.file_size for i in infos)
    if total > max_total_bytes:
        raise InputRefusedError(f"zip declares {total} uncompressed bytes > limit {max_total_bytes}", True)
    return infos


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def printable(text: Any, limit: int = 200) -> str:
    """``text`` with control characters escaped and cut to ``limit`` characters, safe to log or report."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return s.translate(_CONTROL)
