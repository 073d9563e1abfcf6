"""Reads the tensors of a PyTorch .pth file without PyTorch.

`torch.save` writes a zip archive: `<name>/data.pkl` pickles the object, and each tensor's
storage is a raw little-endian file `<name>/data/<key>`. Files saved before torch 1.6 (the
legacy format, as many published weights are) are one stream instead: pickles of a magic
number, the format version and system info, then the object, then its storage keys in
order, then each storage as an int64 element count and its raw bytes. The pickle is read by a
restricted unpickler that knows only the globals a state dict needs: the tensor rebuild
functions, the typed storage classes and `collections.OrderedDict`. Anything else (a
module, a function, an arbitrary class) is refused before it could run, so an untrusted
file cannot execute code. Tensors come back as NumPy arrays with torch's shapes, strides
applied, and dtypes.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from msjax.errors import CheckpointError

# torch's typed storage classes, as `torch.save` names them in the pickle.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _Storage:
    """Stands for a storage class inside the pickle: carries its dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *_):
    """`torch._utils._rebuild_tensor_v2` on a NumPy storage: the strided view, copied."""
    del requires_grad, hooks
    itemsize = storage.dtype.itemsize
    needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
    if needed > storage.size:
        raise ValueError(f"a tensor of size {tuple(size)} reads past its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
    """`torch._utils._rebuild_parameter`: a parameter is its data."""
    del requires_grad, hooks
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,  # torch < 0.4
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
} | {("torch", name): _Storage(name) for name in STORAGE_DTYPES}


# `torch.save`'s legacy stream starts with this pickled number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Unpickler(pickle.Unpickler):
    """Unpickles only `_ALLOWED` globals; storages come from `read_storage(key, dtype)`."""

    def __init__(self, file, read_storage: Callable[[str, np.dtype], np.ndarray], path: Path):
        super().__init__(file)
        self.read_storage, self.path = read_storage, path
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(
                f"{self.path}: refused to unpickle {module}.{name} (only tensors, storages "
                "and plain containers are read)"
            )
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unknown persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _Storage):
            raise CheckpointError(f"{self.path}: storage {key} has no known dtype")
        if key not in self.storages:
            self.storages[key] = self.read_storage(key, storage_type.dtype)
        return self.storages[key]


class _StorageScan(_Unpickler):
    """Reads the object without building tensors: only the storage records are wanted."""

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        return (lambda *args: None) if module == "torch._utils" else found


def _read_zip(path: Path, archive: zipfile.ZipFile) -> Any:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: not a PyTorch zip archive (no data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in archive.namelist():
        if archive.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointError(f"{path}: big-endian tensors are not supported")

    def read_storage(key: str, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype)

    with archive.open(pickles[0]) as f:
        return _Unpickler(f, read_storage, path).load()


def _read_legacy(path: Path) -> Any:
    """The legacy stream: the storages follow the object, so the object is read twice,
    first only to learn each storage's dtype, then with the storages loaded."""
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch .pth (neither zip nor legacy format)")
        pickle.load(f)  # format version
        info = pickle.load(f)
        if not (isinstance(info, dict) and info.get("little_endian", True)):
            raise CheckpointError(f"{path}: big-endian tensors are not supported")
        start = f.tell()
        dtypes: dict[str, np.dtype] = {}

        def note_dtype(key: str, dtype: np.dtype) -> np.ndarray:
            dtypes[key] = dtype
            return np.zeros(0, dtype)

        _StorageScan(f, note_dtype, path).load()
        storages = {}
        for key in pickle.load(f):
            if key not in dtypes:
                raise CheckpointError(f"{path}: storage {key} is not used by any tensor")
            (count,) = struct.unpack("<q", f.read(8))
            raw = f.read(count * dtypes[key].itemsize)
            if count < 0 or len(raw) != count * dtypes[key].itemsize:
                raise CheckpointError(f"{path}: damaged .pth (storage {key} is cut short)")
            storages[key] = np.frombuffer(raw, dtype=dtypes[key])
        f.seek(start)
        return _Unpickler(f, lambda key, dtype: storages[key], path).load()


def read_pth(path: Path) -> Any:
    """The object a .pth holds (a state dict), its tensors as NumPy arrays.

    Reads the zip format (torch >= 1.6) and the legacy one.

    Raises:
        CheckpointError: damaged, big-endian, or it pickles anything besides tensors,
            storages and plain containers.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                return _read_zip(path, archive)
        return _read_legacy(path)
    except CheckpointError:
        raise
    except (
        OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, TypeError,
        zipfile.BadZipFile, struct.error,
    ) as err:
        reason = " ".join(str(err).split())
        raise CheckpointError(f"{path}: damaged .pth ({type(err).__name__}: {reason})") from None
