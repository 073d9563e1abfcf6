"""Reads .npz archives that may come from others (AlexNet params, feature-cache entries).

`np.load` already refuses pickled objects (`allow_pickle=False`), but it allocates each
array at the shape its header declares before reading it: a file of a few bytes could
ask for terabytes. Here every member's header is checked against the bytes the member
actually holds first, so no array is larger than the file. Only what `np.savez` writes
is read: uncompressed members of .npy format 1.0 or 2.0.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `np.savez` archive, by name.

    Raises:
        ValueError: a member that is not an uncompressed .npy of format 1.0 or 2.0, claims
            more bytes than the file holds, holds Python objects, or whose header's shape
            differs from its bytes.
        OSError, zipfile.BadZipFile: the archive cannot be read.
    """
    size = Path(path).stat().st_size
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if name == info.filename or info.flag_bits & 0x1:
                raise ValueError(f"{info.filename!r} is not an .npy member")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{name!r} is compressed (msjax reads what np.savez writes)")
            if info.compress_size != info.file_size or info.header_offset + info.file_size > size:
                raise ValueError(f"{name!r} claims more bytes than the file holds")
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in _HEADERS:
                    raise ValueError(f"{name!r} has .npy format {version}")
                shape, _, dtype = _HEADERS[version](f)
                if dtype.hasobject:
                    raise ValueError(f"{name!r} holds Python objects")
                if f.tell() + math.prod(shape) * dtype.itemsize != info.file_size:
                    raise ValueError(
                        f"{name!r} declares shape {shape} of {dtype}, not its "
                        f"{info.file_size - f.tell()} bytes"
                    )
                f.seek(0)
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays
