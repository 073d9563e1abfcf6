"""Reads the tensors of a PyTorch .pth file without PyTorch, safely for files from others.

`torch.save` writes a zip archive: `<name>/data.pkl` pickles the object, and each tensor's
storage is a raw little-endian file `<name>/data/<key>`. Files saved before torch 1.6 (the
legacy format, as many published weights are) are one stream instead: pickles of a magic
number, the format version and system info, then the object, then its storage keys in
order, then each storage as an int64 element count and its raw bytes.

Nothing in the file can run code or make the reader touch memory it did not allocate:
- Every pickle of both formats is first walked opcode by opcode (`_scan`) without building
  anything: opcodes a state dict never needs are refused (EXT1/2/4 reach globals without
  `find_class`, INST/OBJ/NEWOBJ build classes), memo indices must come in order (the
  unpickler allocates up to the largest), tuples may not nest deeper than _MAX_DEPTH
  (hashing one recurses in C), and nothing may change a global or a storage.
- Then a restricted unpickler builds it: the header pickles may hold only ints, strings,
  bools and containers of them; the object pickle only the tensor rebuild functions, the
  typed storage classes, `collections.OrderedDict` and latin-1 `_codecs.encode` (bytes).
  Any other global is refused before it could run.
- Persistent ids must be well-formed storage records; each storage's bytes must be present
  in the file (and at most MAX_BYTES) before they are read; each tensor's offset, sizes
  and strides (non-negative Python ints, so nothing overflows) must stay inside its
  storage before a view is made, and the tensors together may hold at most
  `tensor_budget` bytes (a multiple of the file's size: shared and expanded storages).
- The object that comes back holds only dicts, lists, tuples, strings, numbers, bytes,
  None and NumPy arrays.
A file that breaks any rule is a one-line CheckpointError naming it and the rule.
Tensors come back as NumPy arrays with torch's shapes, strides applied, and dtypes.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import pickletools
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
# The most bytes a file and its tensors may hold (32 GiB): files are read whole.
MAX_BYTES = 1 << 35
# Tensors may hold this many times the file's size: several may view one storage.
_EXPANSION = 16
_MAX_DEPTH = 100  # tuples in tuples; a state dict nests a few
_MAX_NDIM = 64  # NumPy's limit
# `torch.save`'s legacy stream starts with this pickled number, then this format version.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_VERSION = 1001


class _Bad(Exception):
    """What is wrong with the file; `read_pth` puts its path in front."""


class _Refused(_Bad):
    """The file asks for something a state dict never needs."""


def _damaged(what: str) -> _Bad:
    return _Bad(f"damaged .pth ({what})")


def _refused(what: str) -> _Refused:
    return _Refused(f"refused {what} (only tensors, storages and plain containers are read)")


def _printable(text: str, limit: int = 80) -> str:
    """`text` from the file, fit for a one-line message."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


# --- the opcode walk -------------------------------------------------------------------

# Opcodes that push one new object that is not a tuple (GLOBAL and PERSID push a global
# and a storage: _REF).
_LEAVES = frozenset(
    "NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT "
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 "
    "BINBYTES SHORT_BINBYTES BINBYTES8 EMPTY_DICT EMPTY_LIST".split()
)
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
# The stack holds, per object, how many tuples deep it is (0: not a tuple), or _REF.
_REF = -1


class _Stack:
    """The unpickler's stack as `_scan` follows it: per object its tuple depth or _REF,
    and the marks; as in the unpickler, an opcode pops only objects above the last mark."""

    def __init__(self):
        self.items: list[int] = []
        self.marks: list[int] = []

    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def pop(self, n: int) -> list[int]:
        if len(self.items) - n < self.fence():
            raise _damaged("a pickle pops more than it pushed")
        popped = self.items[len(self.items) - n :]
        del self.items[len(self.items) - n :]
        return popped

    def pop_mark(self) -> list[int]:
        if not self.marks:
            raise _damaged("a pickle pops a mark it never set")
        start = self.marks.pop()
        popped = self.items[start:]
        del self.items[start:]
        return popped

    def top(self) -> int:
        if len(self.items) <= self.fence():
            raise _damaged("a pickle uses an object it never pushed")
        return self.items[-1]

    def change_top(self, opcode: str) -> None:
        """Checks the object that BUILD, APPEND(S) or SETITEM(S) changes."""
        if self.top() == _REF:
            raise _refused(f"pickle opcode {opcode} on a global or a storage")

    def push_tuple(self, items: list[int]) -> None:
        depth = 1 + max([0, *items])
        if depth > _MAX_DEPTH:
            raise _refused(f"tuples nested more than {_MAX_DEPTH} deep")
        self.items.append(depth)


def _scan(data: bytes, start: int) -> int:
    """Walks the pickle at data[start:] as the unpickler would, building nothing; returns
    where it ends.

    Raises:
        _Bad: a refused opcode, an out-of-order memo index, tuples nested too deep, a
            change to a global or storage, or a pickle that is cut short or malformed.
    """
    stream = io.BytesIO(data)  # shares `data`, no copy
    stream.seek(start)
    stack, memo = _Stack(), {}
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            name = opcode.name
            if name in _LEAVES:
                stack.items.append(0)
            elif name in ("GLOBAL", "PERSID"):
                stack.items.append(_REF)
            elif name in ("STACK_GLOBAL", "BINPERSID"):
                stack.pop(2 if name == "STACK_GLOBAL" else 1)
                stack.items.append(_REF)
            elif name == "REDUCE":
                stack.pop(2)
                stack.items.append(0)
            elif name == "MARK":
                stack.marks.append(len(stack.items))
            elif name == "EMPTY_TUPLE":
                stack.push_tuple([])
            elif name == "TUPLE":
                stack.push_tuple(stack.pop_mark())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.push_tuple(stack.pop(int(name[-1])))
            elif name in ("LIST", "DICT"):
                stack.pop_mark()
                stack.items.append(0)
            elif name in ("APPEND", "SETITEM", "BUILD"):
                stack.pop(2 if name == "SETITEM" else 1)
                stack.change_top(name)
            elif name in ("APPENDS", "SETITEMS"):
                stack.pop_mark()
                stack.change_top(name)
            elif name == "POP":
                if len(stack.items) == stack.fence() and stack.marks:
                    stack.marks.pop()  # as the unpickler does: POP right after MARK drops it
                else:
                    stack.pop(1)
            elif name == "POP_MARK":
                stack.pop_mark()
            elif name == "DUP":
                stack.items.append(stack.top())
            elif name in _PUTS:
                index = len(memo) if name == "MEMOIZE" else arg
                if not 0 <= index <= len(memo):
                    raise _refused(f"memo index {index} out of order at byte {pos}")
                memo[index] = stack.top()
            elif name in _GETS:
                if arg not in memo:
                    raise _damaged(f"a pickle reads memo entry {arg}, never written")
                stack.items.append(memo[arg])
            elif name == "STOP":
                if len(stack.items) != 1 or stack.marks:
                    raise _damaged("a pickle ends with objects left over")
                return stream.tell()
            elif name not in ("PROTO", "FRAME"):
                raise _refused(f"pickle opcode {name} at byte {pos}")
    except ValueError as err:  # genops: an unknown opcode, or cut short
        raise _damaged(" ".join(str(err).split())[:200]) from None
    raise _damaged("a pickle ends without STOP")


# --- the unpickler ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands for a typed storage class inside the pickle: carries its dtype."""

    name: str
    dtype: np.dtype


_STORAGE_TYPES = {
    ("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()
}


@dataclasses.dataclass
class _Storage:
    """One storage of the file: key, dtype, element count and, once read, elements [numel]."""

    key: str
    dtype: np.dtype
    numel: int
    array: np.ndarray | None


def tensor_budget(file_size: int) -> int:
    """The most bytes the tensors of a weights file of `file_size` bytes may hold: a
    multiple of its size (several tensors may view one storage), at most MAX_BYTES."""
    return min(_EXPANSION * file_size + (1 << 20), MAX_BYTES)


@dataclasses.dataclass
class _Budget:
    """Bytes the file may still hand out: storages up to its own size, tensors up to
    `tensor_budget`."""

    storages: int
    tensors: int

    @classmethod
    def of(cls, file_size: int) -> _Budget:
        return cls(min(file_size, MAX_BYTES), tensor_budget(file_size))


def _is_int(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_dims(value: Any) -> bool:
    """A tensor's sizes or strides as torch pickles them: up to _MAX_NDIM ints >= 0."""
    return type(value) in (tuple, list) and len(value) <= _MAX_NDIM and all(map(_is_int, value))


# Reads (key, dtype, numel) -> elements [numel]; None: tensors are only checked.
ReadStorage = Callable[[str, np.dtype, int], np.ndarray] | None


class _Unpickler(pickle.Unpickler):
    """Unpickles one pickle that `_scan` accepted.

    A header (`budget` None) may hold no globals and no storages. An object pickle may
    hold `_STORAGE_TYPES`, OrderedDicts and tensors; `read_storage` gives each storage's
    elements (None: each tensor is checked and comes back empty).
    """

    def __init__(
        self, data: bytes, budget: _Budget | None = None, read_storage: ReadStorage = None,
        legacy: bool = False,
    ):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.budget, self.read_storage, self.legacy = budget, read_storage, legacy
        self.storages: dict[str, _Storage] = {}
        self.globals: dict[tuple[str, str], Any] = {} if budget is None else {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._tensor,  # torch < 0.4
            ("torch._utils", "_rebuild_tensor_v2"): self._tensor,
            ("torch._utils", "_rebuild_parameter"): self._parameter,
            ("_codecs", "encode"): _latin1,  # bytes, in pickle protocols 1 and 2
        } | _STORAGE_TYPES

    def load(self) -> Any:
        try:
            return super().load()
        except (
            pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, EOFError, OverflowError,
        ) as err:
            reason = " ".join(str(err).split())[:200]
            raise _damaged(f"{type(err).__name__}: {reason}") from None

    def find_class(self, module: str, name: str) -> Any:
        found = self.globals.get((module, name))
        if found is None:
            raise _refused(f"to unpickle {_printable(module)}.{_printable(name)}")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if self.budget is None:
            raise _damaged("a storage in a header pickle")
        key, dtype, numel = self._storage_record(pid)
        known = self.storages.get(key)
        if known is not None:
            if (known.dtype, known.numel) != (dtype, numel):
                raise _damaged(f"storage {key!r} is declared with two types or sizes")
            return known
        nbytes = numel * dtype.itemsize
        if nbytes > self.budget.storages:
            raise _damaged(
                f"storage {key!r} claims {nbytes} bytes, more than the file holds"
            )
        self.budget.storages -= nbytes
        array = None if self.read_storage is None else self.read_storage(key, dtype, numel)
        self.storages[key] = _Storage(key, dtype, numel, array)
        return self.storages[key]

    def _storage_record(self, pid: Any) -> tuple[str, np.dtype, int]:
        """(key, dtype, numel) of a persistent id: ('storage', type, key, location, numel),
        and in the legacy format a storage view, which must be None (torch >= 0.4)."""
        if not (
            type(pid) is tuple and len(pid) == (6 if self.legacy else 5)
            and type(pid[0]) is str and pid[0] == "storage"
        ):
            raise _damaged("a persistent id that is not a storage record")
        _, kind, key, location, numel, *view = pid
        if not (
            isinstance(kind, _StorageType) and type(key) is str and len(key) <= 100
            and type(location) is str and _is_int(numel)
        ):
            raise _damaged("a storage record with a wrong type, key, location or size")
        if view and view[0] is not None:
            raise _damaged(f"storage {key!r} is a view (torch < 0.4 files are not supported)")
        return key, kind.dtype, numel

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> np.ndarray:
        """`torch._utils._rebuild_tensor_v2`: the strided view of a storage, copied."""
        if type(storage) is not _Storage:
            raise _damaged("a tensor without a storage")
        if not (_is_int(offset) and _is_dims(size) and _is_dims(stride)) or (
            len(size) != len(stride) or len(rest) > 3
        ):
            raise _damaged(f"a tensor of storage {storage.key!r} with a malformed offset, "
                           "size or stride")
        if max(size, default=0) > MAX_BYTES:
            raise _damaged(f"a tensor of size {tuple(size)}")
        numel = math.prod(size)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # Python ints
        if numel and last >= storage.numel:
            raise _damaged(
                f"a tensor of size {tuple(size)}, stride {tuple(stride)} at offset {offset} "
                f"reads past its storage {storage.key!r} of {storage.numel} elements"
            )
        nbytes = numel * storage.dtype.itemsize
        if nbytes > self.budget.tensors:
            raise _damaged("its tensors hold far more bytes than the file")
        self.budget.tensors -= nbytes
        if storage.array is None:
            return np.zeros(0, storage.dtype)  # only checked, see `_read_legacy`
        if not numel:
            return np.zeros(size, storage.dtype)
        itemsize = storage.dtype.itemsize
        view = np.ndarray(
            tuple(size), storage.dtype, buffer=storage.array, offset=offset * itemsize,
            strides=tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride)),
        )
        return view.copy()

    def _parameter(self, data: Any, *rest: Any) -> np.ndarray:
        """`torch._utils._rebuild_parameter`: a parameter is its data."""
        if type(data) is not np.ndarray or len(rest) > 2:
            raise _damaged("a parameter that is not a tensor")
        return data


def _latin1(text: Any, encoding: Any) -> bytes:
    """`_codecs.encode` as pickle protocols 1 and 2 write bytes: only from latin-1 (other
    codecs decompress, and more)."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _refused("a codec other than latin-1")
    return text.encode("latin-1")


def _check_plain(value: Any, leaves: tuple[type, ...]) -> None:
    """Raises _Bad unless `value` holds only dicts, OrderedDicts (whose one attribute may
    be `_metadata`), lists, tuples and `leaves`. Visits each container once, without
    recursion: a file may share and nest containers freely."""
    todo, seen = [value], set()
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind in leaves:
            continue
        if kind not in (dict, collections.OrderedDict, list, tuple):
            raise _refused(f"an object of type {kind.__qualname__}")
        if id(item) in seen:
            continue
        seen.add(id(item))
        if kind is collections.OrderedDict:
            attributes = vars(item)
            if set(attributes) - {"_metadata"}:
                raise _refused("an OrderedDict with attributes besides _metadata")
            todo.extend(attributes.values())
        if kind in (dict, collections.OrderedDict):
            todo.extend(item.keys())
            todo.extend(item.values())
        else:
            todo.extend(item)


_HEADER_LEAVES = (int, str, bool)
_OBJECT_LEAVES = (int, str, bool, float, bytes, type(None), np.ndarray)


def _header(data: bytes, start: int) -> tuple[Any, int]:
    """A header pickle of the legacy stream (ints, strings, bools, containers) and its end."""
    end = _scan(data, start)
    value = _Unpickler(data[start:end]).load()
    _check_plain(value, _HEADER_LEAVES)
    return value, end


def _load_object(
    data: bytes, file_size: int, read_storage: ReadStorage, legacy: bool
) -> tuple[Any, dict[str, _Storage]]:
    """The object pickle `data` (which `_scan` accepted), and the storages it uses."""
    unpickler = _Unpickler(data, _Budget.of(file_size), read_storage, legacy)
    value = unpickler.load()
    _check_plain(value, _OBJECT_LEAVES)
    return value, unpickler.storages


# --- the two formats -------------------------------------------------------------------


def _record(
    archive: zipfile.ZipFile, name: str, file_size: int, nbytes: int | None = None
) -> bytes:
    """One record of a torch zip archive, once its bytes are known to be in the file (and
    to be `nbytes` when given)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _damaged(f"no record {_printable(name)!r}") from None
    if info.flag_bits & 0x1:
        raise _damaged(f"record {_printable(name)!r} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        raise _damaged(f"record {_printable(name)!r} is compressed, which torch.save never does")
    if info.compress_size != info.file_size or info.header_offset + info.file_size > file_size:
        raise _damaged(f"record {_printable(name)!r} claims more bytes than the file holds")
    if nbytes is not None and info.file_size != nbytes:
        raise _damaged(f"record {_printable(name)!r} holds {info.file_size} bytes, not {nbytes}")
    return archive.read(info)


def _read_zip(archive: zipfile.ZipFile, file_size: int) -> Any:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise _Bad("not a PyTorch zip archive (no single data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in archive.namelist():
        if _record(archive, f"{prefix}byteorder", file_size).strip() != b"little":
            raise _Bad("big-endian tensors are not supported")
    data = _record(archive, pickles[0], file_size)

    def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        raw = _record(archive, f"{prefix}data/{key}", file_size, numel * dtype.itemsize)
        return np.frombuffer(raw, dtype)

    if _scan(data, 0) != len(data):
        raise _damaged("data.pkl goes on after its pickle")
    return _load_object(data, file_size, read_storage, legacy=False)[0]


def _read_legacy(data: bytes) -> Any:
    """The legacy stream: the storages follow the object, so the object is read twice,
    first to learn each storage's dtype and size (its tensors checked against them),
    then with the storages read."""
    try:
        magic, pos = _header(data, 0)
    except _Refused:
        raise
    except _Bad:
        magic = None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise _Bad("not a PyTorch .pth (neither zip nor legacy format)")
    version, pos = _header(data, pos)
    if type(version) is not int or version != _LEGACY_VERSION:
        raise _damaged("an unknown legacy format version")
    info, start = _header(data, pos)
    if type(info) is not dict:
        raise _damaged("its system info is not a dict")
    if info.get("little_endian", True) is not True:
        raise _Bad("big-endian tensors are not supported")
    end = _scan(data, start)
    _, declared = _load_object(data[start:end], len(data), None, legacy=True)
    keys, pos = _header(data, end)
    if not (
        type(keys) is list and all(type(key) is str for key in keys)
        and len(set(keys)) == len(keys) and set(keys) == set(declared)
    ):
        raise _damaged("its storage list differs from the storages its tensors use")
    storages = {}
    for key in keys:
        storage = declared[key]
        if pos + 8 > len(data):
            raise _damaged(f"storage {key!r} is cut short")
        (count,) = struct.unpack_from("<q", data, pos)
        if count != storage.numel:
            raise _damaged(f"storage {key!r} holds {count} elements, not {storage.numel}")
        nbytes = count * storage.dtype.itemsize
        if pos + 8 + nbytes > len(data):
            raise _damaged(f"storage {key!r} is cut short")
        storages[key] = np.frombuffer(data, storage.dtype, count, pos + 8)
        pos += 8 + nbytes
    return _load_object(
        data[start:end], len(data), lambda key, dtype, numel: storages[key], legacy=True
    )[0]


def read_pth(path: Path) -> Any:
    """The object a .pth holds (a state dict), its tensors as NumPy arrays.

    Reads the zip format (torch >= 1.6) and the legacy one. The file may come from anyone:
    see the module docstring for what is checked.

    Returns:
        Dicts, OrderedDicts, lists and tuples of strings, numbers, bytes, None and
        NumPy arrays.

    Raises:
        CheckpointError: damaged, big-endian, larger than MAX_BYTES, or it holds anything
            besides tensors, storages and plain containers (one line naming the file).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BYTES:
                raise _Bad(f"larger than {MAX_BYTES >> 30} GiB, the most msjax reads")
            if f.read(4) == b"PK\x03\x04":
                with zipfile.ZipFile(f) as archive:
                    return _read_zip(archive, size)
            f.seek(0)
            data = f.read()
        return _read_legacy(data)
    except _Bad as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (  # what zipfile raises for damaged archives (NotImplementedError: a version)
        OSError, EOFError, ValueError, zipfile.BadZipFile, struct.error, OverflowError,
        NotImplementedError,
    ) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: damaged .pth ({type(err).__name__}: {reason})") from None
