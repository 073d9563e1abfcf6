"""Reads the tensors of a PyTorch .pth file without PyTorch.

`torch.save` writes a zip archive: `<name>/data.pkl` pickles the object, and each tensor's
storage is a raw little-endian file `<name>/data/<key>`. The pickle is read by a
restricted unpickler that knows only the globals a state dict needs: the tensor rebuild
functions, the typed storage classes and `collections.OrderedDict`. Anything else (a
module, a function, an arbitrary class) is refused before it could run, so an untrusted
file cannot execute code. Tensors come back as NumPy arrays with torch's shapes, strides
applied, and dtypes.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
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
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
} | {("torch", name): _Storage(name) for name in STORAGE_DTYPES}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
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
            raw = self.archive.read(f"{self.prefix}data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self.storages[key]


def read_pth(path: Path) -> Any:
    """The object a zip-format .pth holds (a state dict), its tensors as NumPy arrays.

    Raises:
        CheckpointError: not a zip-format .pth, damaged, big-endian, or it pickles
            anything besides tensors, storages and plain containers.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: not a PyTorch zip archive (no data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in archive.namelist():
                if archive.read(f"{prefix}byteorder").strip() != b"little":
                    raise CheckpointError(f"{path}: big-endian tensors are not supported")
            with archive.open(pickles[0]) as f:
                return _Unpickler(f, archive, prefix, path).load()
    except CheckpointError:
        raise
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a zip-format .pth (files saved before torch 1.6 need "
            "bin/port_alexnet, which reads them with torch)"
        ) from None
    except (OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, TypeError) as err:
        raise CheckpointError(f"{path}: damaged .pth ({type(err).__name__}: {err})") from None
