"""IDX files (LeCun's MNIST format, which FashionMNIST uses), gzipped or not, read with numpy.

An IDX file is 2 zero bytes, a type byte (0x08: unsigned bytes, the only type FashionMNIST uses), the number of
dimensions d, then d big-endian uint32 sizes, then prod(sizes) bytes in C order, and nothing after them. So a
FashionMNIST image file starts with the magic number 0x00000803 and (n, 28, 28); a label file with 0x00000801 and
(n,). A gzipped file is recognised by its own magic bytes (1f 8b), whatever its name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08


class IdxError(ValueError):
    """A file that is not a well-formed IDX file of unsigned bytes with the expected number of dimensions."""


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (gzipped or not), of ``ndim`` dimensions; IdxError otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise IdxError(f"cannot be read ({err.strerror or err})") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxError(f"is a damaged gzip file ({' '.join(str(err).split())})") from None
    if len(raw) < 4:
        raise IdxError(f"is {len(raw)} bytes long, too short for an IDX header")
    magic = struct.unpack(">I", raw[:4])[0]
    expected_magic = (UBYTE << 8) | ndim
    if magic != expected_magic:
        raise IdxError(
            f"has magic number 0x{magic:08x}, not 0x{expected_magic:08x} (an IDX file of unsigned bytes with "
            f"{ndim} dimension{'s' if ndim > 1 else ''})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"is truncated inside its header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need, have = math.prod(dims), len(raw) - header
    if have != need:
        shape = "×".join(map(str, dims))
        what = "truncated" if have < need else "followed by extra bytes"
        raise IdxError(f"declares {shape} values ({need} bytes) but holds {have}: {what}")
    # A writable buffer, so torch.from_numpy can share it (bytes are read-only).
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header).reshape(dims)
