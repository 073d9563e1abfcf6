"""Files from others. The torch-free .pth reader against files built here to attack it
(code that must not run, strides, offsets and sizes that would read outside a storage or
allocate far more than the file holds, files cut short) and against random byte changes
of real torch.save files, each read in a child process; then the other readers (.npz
params and cache entries, --ssl directories, checkpoints for predict, JSON) against
hostile files of their own."""

import copyreg
import io
import json
import os
import pickle
import pickletools
import random
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from conftest import REPO

from msjax.convert.hf import load_ssl
from msjax.convert.pth import read_pth
from msjax.convert.torchvision import expected_shapes, load_alexnet_params
from msjax.data import manifest
from msjax.errors import CheckpointError, DataError
from msjax.features.cache import FeatureCache
from msjax.inference.predict import Predictor
from msjax.io import checkpoint

ZIP, LEGACY = True, False
FORMATS = pytest.mark.parametrize("zip_format", [ZIP, LEGACY], ids=["zip", "legacy"])


class Reducer:
    """Unpickling this runs `touch marker` (if the reader let it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def refuses(path, match):
    """read_pth(path) ends in one CheckpointError line naming `path` and matching `match`."""
    with pytest.raises(CheckpointError, match=match) as err:
        read_pth(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def frag(value) -> bytes:
    """`value` (plain data) as pickle opcodes without PROTO, STOP and memo."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


def glob(module, name) -> bytes:
    return f"c{module}\n{name}\n".encode()


def pid(key="0", numel=6, legacy=False, storage=glob("torch", "FloatStorage"), view=None):
    """A storage record as torch pickles it (the legacy format adds a view, None)."""
    fields = frag("storage") + storage + frag(key) + frag("cpu") + frag(numel)
    return b"(" + fields + (frag(view) if legacy else b"") + b"t"


def tensor(record: bytes, offset=0, size=(2, 3), stride=(3, 1)) -> bytes:
    """Opcodes of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`."""
    args = frag(offset) + frag(size) + frag(stride) + frag(False)
    hooks = glob("collections", "OrderedDict") + b")R"
    return glob("torch._utils", "_rebuild_tensor_v2") + b"(" + record + b"Q" + args + hooks + b"tR"


def state(*items: tuple[str, bytes]) -> bytes:
    """A pickled dict {name: object opcodes}."""
    return b"\x80\x02}" + b"".join(frag(k) + v + b"s" for k, v in items) + b"."


def legacy_sections(data: bytes) -> list[int]:
    """Where each of the legacy stream's 5 pickles starts, then where its storages start."""
    stream, starts = io.BytesIO(data), []
    for _ in range(5):
        starts.append(stream.tell())
        for _ in pickletools.genops(stream):
            pass
    return [*starts, stream.tell()]


ARANGE = np.arange(6, dtype="<f4")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """torch.save files of {"w": arange(6) as [2, 3]} in both formats."""
    folder = tmp_path_factory.mktemp("real")
    files = {}
    for zip_format in (ZIP, LEGACY):
        files[zip_format] = folder / f"{'zip' if zip_format else 'legacy'}.pth"
        obj = {"w": torch.arange(6.0).reshape(2, 3)}
        torch.save(obj, files[zip_format], _use_new_zipfile_serialization=zip_format)
    return files


def rezip(source: Path, out: Path, compress=zipfile.ZIP_STORED, **records: bytes) -> Path:
    """`source` (a torch zip) rewritten, records replaced by name below the archive's
    folder with "/" and "." as "_" (data_pkl, data_0)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w", compress) as new:
        for name in archive.namelist():
            part = name.split("/", 1)[1].replace("/", "_").replace(".", "_")
            new.writestr(name, records.pop(part, None) or archive.read(name))
    assert not records, f"no such records: {list(records)}"
    return out


def crafted(real, tmp_path, zip_format, obj: bytes, storage=ARANGE.tobytes(), count=None):
    """A file holding the object pickle `obj` and storage "0" (`storage`'s bytes; the
    legacy stream's element count is `count`, by default the bytes' count)."""
    out = tmp_path / f"crafted-{'zip' if zip_format else 'legacy'}.pth"
    if zip_format:
        return rezip(real[ZIP], out, data_pkl=obj, data_0=storage)
    data = real[LEGACY].read_bytes()
    header = data[: legacy_sections(data)[3]]
    count = len(storage) // 4 if count is None else count
    out.write_bytes(header + obj + pickle.dumps(["0"], 2) + struct.pack("<q", count) + storage)
    return out


# --- the pieces the crafted files are built from are right -----------------------------


@FORMATS
def test_crafted_files_read_as_torch_reads_them(real, tmp_path, zip_format):
    """The adversarial files below differ from these in one field only."""
    obj = state(
        ("w", tensor(pid(legacy=not zip_format))),
        ("t", tensor(pid(legacy=not zip_format), offset=1, size=(2, 2), stride=(1, 3))),
    )
    path = crafted(real, tmp_path, zip_format, obj)
    got, want = read_pth(path), torch.load(path, weights_only=True)
    for name in ("w", "t"):
        np.testing.assert_array_equal(got[name], want[name].numpy())
    np.testing.assert_array_equal(got["t"], [[1, 4], [2, 5]])


def test_state_dict_metadata_is_read(tmp_path):
    """A module's state dict carries `_metadata` as an attribute (BUILD on an OrderedDict)."""
    path = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    got = read_pth(path)
    assert list(got) == ["weight", "bias"] and vars(got) == {"_metadata": {"": {"version": 1}}}


# --- nothing in a file runs ------------------------------------------------------------


@pytest.mark.parametrize("section", range(5), ids=["magic", "version", "info", "object", "keys"])
def test_a_reducing_object_in_any_legacy_pickle_runs_nothing(real, tmp_path, section):
    marker = tmp_path / "marker"
    data = real[LEGACY].read_bytes()
    starts = legacy_sections(data)
    payload = pickle.dumps([Reducer(marker)], protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(data[: starts[section]] + payload + data[starts[section + 1] :])
    refuses(path, r"refused to unpickle posix\.system \(only tensors, storages and plain")
    assert not marker.exists()


@FORMATS
@pytest.mark.parametrize("protocol", range(6))
def test_globals_of_every_pickle_protocol_are_refused(real, tmp_path, zip_format, protocol):
    """Protocols 0-3 reach a global through GLOBAL, 4 and 5 through STACK_GLOBAL."""
    marker = tmp_path / "marker"
    obj = pickle.dumps({"w": Reducer(marker)}, protocol=protocol)
    opcodes = {op.name for op, *_ in pickletools.genops(obj)}
    assert ("STACK_GLOBAL" if protocol >= 4 else "GLOBAL") in opcodes
    refuses(crafted(real, tmp_path, zip_format, obj), r"refused to unpickle posix\.system")
    assert not marker.exists()


@FORMATS
def test_inst_is_refused(real, tmp_path, zip_format):
    marker = tmp_path / "marker"
    obj = b"(dS'w'\n(S'touch " + str(marker).encode() + b"'\nios\nsystem\ns."
    refuses(crafted(real, tmp_path, zip_format, obj), "refused pickle opcode INST at byte")
    assert not marker.exists()


def test_an_extension_code_cannot_reach_a_cached_global(real, tmp_path):
    """EXT1 takes its global from copyreg's cache without asking find_class: once any
    unpickling in the process has used the code, only refusing the opcode stops it."""
    marker = tmp_path / "marker"
    copyreg.add_extension("posix", "system", 0xF0)
    try:
        assert pickle.loads(b"\x80\x02\x82\xf0.") is os.system  # fills the cache
        obj = b"\x80\x02}" + frag("w") + b"\x82\xf0" + frag((f"touch {marker}",)) + b"Rs."
        refuses(crafted(real, tmp_path, ZIP, obj), "refused pickle opcode EXT1 at byte")
    finally:
        copyreg.remove_extension("posix", "system", 0xF0)
    assert not marker.exists()


@FORMATS
def test_a_global_cannot_be_changed_for_later_files(real, tmp_path, zip_format):
    """BUILD on a storage class would set its dtype for every later file."""
    poison = glob("torch", "FloatStorage") + frag({"dtype": "O"}) + b"b0"
    obj = b"\x80\x02" + poison + state(("w", tensor(pid(legacy=not zip_format))))[2:]
    refuses(crafted(real, tmp_path, zip_format, obj), "refused pickle opcode BUILD on a global")
    np.testing.assert_array_equal(read_pth(real[zip_format])["w"], ARANGE.reshape(2, 3))


def test_memo_indices_must_come_in_order(real, tmp_path):
    """The unpickler allocates the memo up to its largest index: 2**31 would be 16 GiB."""
    obj = b"\x80\x02Nr" + struct.pack("<I", 2**31 - 1) + b"0}."
    refuses(crafted(real, tmp_path, ZIP, obj), "refused memo index 2147483647 out of order")


@FORMATS
@pytest.mark.parametrize(
    "obj, match",
    [
        (state(("w", glob("torch", "FloatStorage"))), "refused an object of type _StorageType"),
        (state(("w", pid() + b"Q")), "refused an object of type _Storage"),
        (
            state(("w", glob("_codecs", "encode") + frag(("x\x9c", "zlib_codec")) + b"R")),
            "refused a codec other than latin-1",
        ),
        (
            state(("w", glob("collections", "OrderedDict") + b")R" + frag({"items": 1}) + b"b")),
            "refused an OrderedDict with attributes besides _metadata",
        ),
    ],
    ids=["storage class", "raw storage", "codec", "OrderedDict attribute"],
)
def test_only_plain_data_comes_back(real, tmp_path, zip_format, obj, match):
    if not zip_format:
        obj = obj.replace(pid(), pid(legacy=True))
    refuses(crafted(real, tmp_path, zip_format, obj), match)


# --- persistent ids --------------------------------------------------------------------

RECORD = "a persistent id that is not a storage record"
FIELDS = "a storage record with a wrong type, key, location or size"


@FORMATS
@pytest.mark.parametrize(
    "record, match",
    [
        (lambda legacy: frag("storage"), RECORD),
        (lambda legacy: frag(("storage", "0", "cpu", 6)), RECORD),
        (lambda legacy: pid(legacy=legacy)[:-1] + frag(None) + b"t", RECORD),
        (lambda legacy: pid(legacy=legacy).replace(frag("storage"), frag("tensor")), RECORD),
        (lambda legacy: pid(legacy=legacy, storage=frag("FloatStorage")), FIELDS),
        (lambda legacy: pid(legacy=legacy, storage=glob("collections", "OrderedDict")), FIELDS),
        (lambda legacy: pid(legacy=legacy, key=0), FIELDS),
        (lambda legacy: pid(legacy=legacy, key="k" * 1000), FIELDS),
        (lambda legacy: pid(legacy=legacy, numel=-1), FIELDS),
        (lambda legacy: pid(legacy=legacy, numel=6.0), FIELDS),
        (lambda legacy: pid(legacy=legacy, numel=True), FIELDS),
    ],
    ids=[
        "a string", "short", "long", "tag", "type a string", "type a class", "key an int",
        "key too long", "numel negative", "numel a float", "numel a bool",
    ],
)
def test_persistent_ids_of_the_wrong_shape_or_type(real, tmp_path, zip_format, record, match):
    obj = state(("w", tensor(record(not zip_format))))
    refuses(crafted(real, tmp_path, zip_format, obj), match)


def test_text_persistent_ids_and_storage_views_are_refused(real, tmp_path):
    refuses(crafted(real, tmp_path, ZIP, state(("w", b"P0\n"))), RECORD)
    view = tensor(pid(legacy=True, view=("1", 0, 6)))
    refuses(crafted(real, tmp_path, LEGACY, state(("w", view))), "is a view")


@FORMATS
def test_a_storage_declared_twice_differently(real, tmp_path, zip_format):
    legacy = not zip_format
    ints = pid(legacy=legacy, storage=glob("torch", "IntStorage"))
    obj = state(("a", tensor(pid(legacy=legacy))), ("b", tensor(ints)))
    refuses(crafted(real, tmp_path, zip_format, obj), "declared with two types or sizes")


def test_header_pickles_hold_no_storages(real, tmp_path):
    data = real[LEGACY].read_bytes()
    starts = legacy_sections(data)
    info = b"\x80\x02}" + frag("x") + frag(("storage", "0")) + b"Qs."
    path = tmp_path / "info.pth"
    path.write_bytes(data[: starts[2]] + info + data[starts[3] :])
    refuses(path, "a storage in a header pickle")


# --- offsets, sizes and strides ----------------------------------------------------------

MALFORMED = "with a malformed offset, size or stride"
PAST = "reads past its storage '0' of 6 elements"


@FORMATS
@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(stride=(-3, 1)), MALFORMED),
        (dict(stride=(-(2**62), 1)), MALFORMED),
        (dict(offset=-1), MALFORMED),
        (dict(size=(-1, 3)), MALFORMED),
        (dict(stride=(3.0, 1)), MALFORMED),
        (dict(offset=True), MALFORMED),
        (dict(stride=(1,)), MALFORMED),
        (dict(size=(1,) * 65, stride=(1,) * 65), MALFORMED),
        (dict(stride=(4, 1)), PAST),
        (dict(offset=1), PAST),
        (dict(size=(3, 3)), PAST),
        (dict(size=(1,), stride=(1,), offset=6), PAST),
        (dict(stride=(2**64 + 3, 1)), PAST),  # 3 once wrapped to int64
        (dict(offset=2**64, size=(1,), stride=(1,)), PAST),
        (dict(size=(2**64, 1), stride=(0, 0)), r"a tensor of size \(18446744073709551616, 1\)"),
        (dict(size=(2**32, 2**32), stride=(0, 0)), "its tensors hold far more bytes than"),
        (dict(size=(2**20, 2**20), stride=(0, 0)), "its tensors hold far more bytes than"),
    ],
    ids=[
        "negative stride", "large negative stride", "negative offset", "negative size",
        "float stride", "bool offset", "strides missing", "65 dims", "stride past",
        "offset past", "size past", "offset at the end", "overflowing stride",
        "overflowing offset", "overflowing size", "size product overflowing int64",
        "expanded beyond the file",
    ],
)
def test_views_outside_their_storage_are_refused(real, tmp_path, zip_format, fields, match):
    obj = state(("w", tensor(pid(legacy=not zip_format), **fields)))
    refuses(crafted(real, tmp_path, zip_format, obj), match)


# --- storage sizes -----------------------------------------------------------------------


@FORMATS
def test_a_storage_shorter_than_its_tensor(real, tmp_path, zip_format):
    obj = state(("w", tensor(pid(numel=4, legacy=not zip_format))))
    path = crafted(real, tmp_path, zip_format, obj, storage=ARANGE[:4].tobytes())
    refuses(path, "reads past its storage '0' of 4 elements")


def test_a_storage_shorter_than_its_record(real, tmp_path):
    short = ARANGE[:4].tobytes()
    obj = state(("w", tensor(pid())))
    refuses(crafted(real, tmp_path, ZIP, obj, storage=short), "holds 16 bytes, not 24")
    obj = state(("w", tensor(pid(legacy=True))))
    refuses(crafted(real, tmp_path, LEGACY, obj, storage=short), "holds 4 elements, not 6")


@FORMATS
def test_a_storage_far_larger_than_the_file_is_not_read(real, tmp_path, zip_format):
    obj = state(("w", tensor(pid(numel=2**40, legacy=not zip_format))))
    path = crafted(real, tmp_path, zip_format, obj)
    refuses(path, r"storage '0' claims 4398046511104 bytes, more than the file holds")


@pytest.mark.parametrize("count", [2**40, 2**62, -1, 7])
def test_a_legacy_element_count_must_match_its_record(real, tmp_path, count):
    obj = state(("w", tensor(pid(legacy=True))))
    path = crafted(real, tmp_path, LEGACY, obj, count=count)
    refuses(path, f"storage '0' holds {count} elements, not 6")


def test_a_legacy_storage_list_must_match_the_tensors(real, tmp_path):
    data = real[LEGACY].read_bytes()
    starts = legacy_sections(data)
    for keys in (["nope"], [], [1], ["0", "0"]):
        path = tmp_path / "keys.pth"
        path.write_bytes(data[: starts[4]] + pickle.dumps(keys, 2) + data[starts[5] :])
        refuses(path, "its storage list differs from the storages its tensors use")


def test_zip_records_must_be_stored_plain_and_present(real, tmp_path):
    path = rezip(real[ZIP], tmp_path / "deflated.pth", zipfile.ZIP_DEFLATED)
    refuses(path, "record 'zip/byteorder' is compressed, which torch.save never does")
    data = real[ZIP].read_bytes()
    with zipfile.ZipFile(real[ZIP]) as archive:
        index = archive.namelist().index("zip/data/0")
    # The central directory entry of data/0: its flags at +8, its two sizes at +20.
    entry = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"][index]
    huge = bytearray(data)
    huge[entry + 20 : entry + 28] = struct.pack("<II", 2**31 - 1, 2**31 - 1)
    (tmp_path / "huge.pth").write_bytes(huge)
    refuses(tmp_path / "huge.pth", "record 'zip/data/0' claims more bytes than the file holds")
    encrypted = bytearray(data)
    encrypted[entry + 8] |= 0x1
    (tmp_path / "encrypted.pth").write_bytes(encrypted)
    refuses(tmp_path / "encrypted.pth", "record 'zip/data/0' is encrypted")


# --- files cut short -------------------------------------------------------------------


def test_a_legacy_file_cut_at_any_section_boundary(real, tmp_path):
    data = real[LEGACY].read_bytes()
    starts = legacy_sections(data)
    boundaries = [*starts, starts[-1] + 8]  # then the count, then the storage's bytes
    assert boundaries[-1] < len(data)
    for end in sorted({b + d for b in boundaries for d in (-1, 0, 1)} - {-1, len(data)}):
        path = tmp_path / f"cut{end}.pth"
        path.write_bytes(data[:end])
        in_storages = end >= starts[5]
        refuses(path, "storage '.+' is cut short" if in_storages else "damaged|not a PyTorch")


def test_a_zip_file_cut_at_any_section_boundary(real, tmp_path):
    data = real[ZIP].read_bytes()
    with zipfile.ZipFile(real[ZIP]) as archive:
        infos = archive.infolist()
        directory = archive.start_dir
    boundaries = [directory, data.rindex(b"PK\x05\x06")]
    for info in infos:
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        boundaries += [info.header_offset, start, start + info.compress_size]
    for end in sorted({b + d for b in boundaries for d in (-1, 0, 1)} - {len(data)}):
        path = tmp_path / f"cut{end}.pth"
        path.write_bytes(data[:end])
        refuses(path, "damaged .pth|not a PyTorch .pth")


# --- in a child process: crashes and hangs ---------------------------------------------

# Reads each file named in argv[1] (a JSON list) and prints "start i" before and
# "done i <outcome>" after: "ok <digest of what was read>", "error" (one CheckpointError
# line naming the file) or "other <type>". A read past 5 s is ended by SIGALRM, a hang
# the parent sees as such.
CHILD = r"""
import hashlib, json, pickle, signal, sys
from msjax.convert.pth import read_pth
from msjax.errors import CheckpointError
for i, path in enumerate(json.load(open(sys.argv[1]))):
    print("start", i, flush=True)
    signal.alarm(5)
    try:
        outcome = "ok " + hashlib.sha256(pickle.dumps(read_pth(path))).hexdigest()
    except CheckpointError as err:
        text = str(err)
        outcome = "error" if text.startswith(path + ": ") and "\n" not in text else "bad-message"
    except BaseException as err:
        outcome = "other " + type(err).__name__
    signal.alarm(0)
    print("done", i, outcome, flush=True)
"""


def read_in_children(paths: list[Path], tmp_path: Path) -> list[str]:
    """Each path's outcome, read in child processes (see CHILD); a child that dies is
    restarted after the file it died on, whose outcome is then "signal <n>" (SIGALRM for
    a hang)."""
    outcomes: list[str] = []
    while len(outcomes) < len(paths):
        todo = tmp_path / "todo.json"
        todo.write_text(json.dumps([str(p) for p in paths[len(outcomes) :]]))
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(todo)], capture_output=True, text=True,
            cwd=REPO, timeout=300,
        )
        done = [line.split(" ", 2)[2] for line in child.stdout.splitlines() if line[:4] == "done"]
        outcomes += done
        if child.returncode != 0:
            assert len(outcomes) < len(paths), child.stderr[-2000:]
            outcomes.append(f"signal {-child.returncode}" if child.returncode < 0 else "exit")
    return outcomes


def test_tuples_nested_too_deep_are_refused_before_hashing(real, tmp_path):
    """A dict key of a million nested tuples would crash CPython's hash (C recursion)."""
    key = b"N" + b"\x85" * 1_000_000
    path = crafted(real, tmp_path, ZIP, b"\x80\x02}" + key + b"K\x01s.")
    assert read_in_children([path], tmp_path) == ["error"]
    refuses(path, "refused tuples nested more than 100 deep")


MUTATIONS, SEED = 1000, 29  # per family below


def mutants(source: bytes, rng: random.Random) -> bytes:
    """`source` with 1 to 4 random bytes replaced by random values."""
    data = bytearray(source)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def test_random_byte_changes_end_in_a_read_or_one_error(tmp_path):
    """1000 mutations (seed 29) of each: a legacy torch.save file, a zip one (whose CRCs
    catch most changes), and the zip with its data.pkl changed and the CRCs recomputed
    (so that the pickle checks see them). Every outcome is a read or one CheckpointError
    line: never a signal, a hang past 5 s or another exception."""
    torch.manual_seed(0)
    obj = torch.nn.Linear(3, 2).state_dict()
    shared = torch.arange(6.0)
    obj.update(a=shared[:4], b=shared[2:].view(2, 2).t(), h=torch.randn(3).half())
    sources = {}
    for zip_format in (ZIP, LEGACY):
        path = tmp_path / f"source-{zip_format}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
        sources[zip_format] = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(sources[ZIP])) as archive:
        pickled = archive.read("source-True/data.pkl")
    rng = random.Random(SEED)
    paths, families = [], []
    for i in range(MUTATIONS):
        for family in ("legacy", "zip", "data.pkl"):
            path = tmp_path / f"m{i}-{family}.pth"
            if family == "data.pkl":
                rezip(tmp_path / "source-True.pth", path, data_pkl=mutants(pickled, rng))
            else:
                path.write_bytes(mutants(sources[family == "zip"], rng))
            paths.append(path)
            families.append(family)
    outcomes = read_in_children([tmp_path / "source-True.pth", *paths], tmp_path)
    original, outcomes = outcomes[0], outcomes[1:]
    counts = {}
    for family, outcome in zip(families, outcomes):
        counts[family, outcome[:2]] = counts.get((family, outcome[:2]), 0) + 1
    print(counts)
    wrong = [(p.name, o) for p, o in zip(paths, outcomes) if o != "error" and o[:3] != "ok "]
    assert not wrong, wrong[:10]
    # The CRCs cover every byte the zip reader reads: what it reads is what was saved.
    changed = [
        p.name for p, f, o in zip(paths, families, outcomes) if f == "zip" and o[:2] == "ok"
        and o != original
    ]
    assert original.startswith("ok ") and not changed, changed[:10]
    for family in ("legacy", "zip", "data.pkl"):  # neither outcome is vacuous
        assert counts.get((family, "er"), 0) > MUTATIONS // 10, counts
        assert counts.get((family, "ok"), 0) > 0, counts


# --- the other readers of files from others ------------------------------------------


def npz_member(path: Path, name: str, header: dict, data: bytes = b"") -> Path:
    """An .npz archive of one member `name`.npy with `header` and `data`."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", member.getvalue() + data)
    return path


@pytest.mark.parametrize(
    "header, match",
    [
        ({"descr": "<f4", "fortran_order": False, "shape": (10**11,)}, "declares shape"),
        ({"descr": "<f4", "fortran_order": False, "shape": (-5,)}, "declares shape"),
        ({"descr": "|O", "fortran_order": False, "shape": (1,)}, "holds Python objects"),
    ],
    ids=["huge", "negative", "objects"],
)
def test_alexnet_params_headers_are_checked_before_allocating(tmp_path, header, match):
    path = npz_member(tmp_path / "alexnet.npz", "features_0/kernel", header, b"\0" * 16)
    with pytest.raises(CheckpointError, match=f"alexnet.npz: cannot read .*{match}"):
        load_alexnet_params(path)


def test_alexnet_params_must_be_finite_floats_stored_plainly(tmp_path):
    flat = {k: np.zeros(shape, np.float32) for k, shape in expected_shapes().items()}
    path = tmp_path / "alexnet.npz"
    np.savez_compressed(path, **flat)
    with pytest.raises(CheckpointError, match="'features_0/bias' is compressed"):
        load_alexnet_params(path)
    flat["features_0/bias"] = np.full(64, np.nan, np.float32)
    flat["features_3/bias"] = np.zeros(192, np.int32)
    np.savez(path, **flat)
    with pytest.raises(CheckpointError, match="not finite floats: features_0/bias, features_3/b"):
        load_alexnet_params(path)


def test_npz_members_must_lie_in_the_file(tmp_path):
    path = npz_member(tmp_path / "a.npz", "a", {"descr": "<f4", "fortran_order": False,
                                                "shape": (4,)}, ARANGE[:4].tobytes())
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the central directory entry: sizes at +20
    data[entry + 20 : entry + 28] = struct.pack("<II", 2**31 - 1, 2**31 - 1)
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="'a' claims more bytes than the file holds"):
        load_alexnet_params(path)


def test_a_cache_entry_cannot_make_the_reader_allocate(tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    key = FeatureCache.key("0" * 64, "features")
    cache.put("acoustic", key, {"mfcc": np.zeros((2, 3), np.float32)})
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    npz_member(cache.path("acoustic", key), "mfcc", header)
    assert cache.get("acoustic", key) is None and cache.stats.corrupt == 1
    assert not cache.path("acoustic", key).exists() and "declares shape" in caplog.text


@pytest.fixture
def ssl_dir(tmp_path):
    """A checkpoint directory with a tiny wav2vec2 config and no weights yet."""
    transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ).save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path)
    return tmp_path


def test_safetensors_offsets_are_checked_by_the_library(ssl_dir):
    """The safetensors library refuses offsets outside the file, overlapping or overflowing;
    msjax relies on it and reports its error in one line."""
    safetensors.numpy.save_file({"w": ARANGE}, str(ssl_dir / "model.safetensors"))
    data = (ssl_dir / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    for offsets in ([0, 2**40], [8, 4], [0, 2**64 - 1], [4, 28]):
        header["w"]["data_offsets"] = offsets
        text = json.dumps(header).encode()
        (ssl_dir / "model.safetensors").write_bytes(
            struct.pack("<Q", len(text)) + text + data[8 + length :]
        )
        with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors"):
            load_ssl(ssl_dir)


@pytest.mark.parametrize(
    "index", [{"weight_map": {"w": "../model.safetensors"}}, {"weight_map": {"w": "/etc/x"}},
              {"weight_map": {}}, {"weight_map": ["a"]}, ["model.safetensors"]],
    ids=["parent", "absolute", "empty", "a list", "no object"],
)
def test_shard_indexes_name_files_beside_them(ssl_dir, index):
    (ssl_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="weight_map must map tensor names to shard files"):
        load_ssl(ssl_dir)


def test_bin_weights_go_through_a_safe_torch_loader_only(ssl_dir, monkeypatch):
    marker = ssl_dir / "marker"
    path = ssl_dir / "pytorch_model.bin"
    torch.save({"w": Reducer(marker)}, path)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: unreadable PyTorch weights"):
        load_ssl(ssl_dir)
    assert not marker.exists()
    torch.save({"w": torch.zeros(1).expand(10**6, 100)}, path)  # one element, expanded
    with pytest.raises(CheckpointError, match="take 400000000 bytes, far more than the file"):
        load_ssl(ssl_dir)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_ssl(ssl_dir)
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.5.1"))
    with pytest.raises(CheckpointError, match=r"torch 2.5.1's weights_only loader lets a file"):
        load_ssl(ssl_dir)


def test_a_checkpoint_cannot_declare_arrays_far_larger_than_its_files(tmp_path):
    """orbax compresses constant chunks and fills missing ones: 128 MiB of zeros take a
    few kB of files, and a checkpoint could declare terabytes the same way."""
    checkpoint.save_best(tmp_path, 1, {"params": {"w": jnp.zeros(32 << 20)}}, {"labels": []})
    with pytest.raises(CheckpointError, match=r"variables: declares 134217728 bytes of arrays"):
        checkpoint.restore_best(tmp_path / "best" / "1", None)
    weights = jnp.asarray(np.random.default_rng(0).standard_normal(1000), jnp.float32)
    checkpoint.save_best(tmp_path, 2, {"params": {"w": weights}}, {"labels": []})
    restored = checkpoint.restore_best(tmp_path / "best" / "2", None)
    np.testing.assert_array_equal(restored["params"]["w"], weights)


SSL_META = dict(name="x", identity="y", normalize=True, finetune=False, seed=0, config={})
META = dict(labels=["a", "b"], features={}, image_size=[2, 2], model={}, ssl=SSL_META)


@pytest.mark.parametrize(
    "change, wrong",
    [
        (dict(labels="ab", image_size=[2]), "labels, image_size"),
        (dict(labels=["a", "a"], model=[]), "model, labels"),
        (dict(labels=[1], ssl=dict(SSL_META, seed="0", config=None)), "ssl.seed, ssl.config, lab"),
        (dict(features={"bogus": 1}), None),
        (dict(ssl=dict(SSL_META, finetune=True)), "encoder"),
        (dict(model={"use_attention": True}, ssl=dict(SSL_META, finetune=True)), "model"),
    ],
    ids=["types", "values", "ssl fields", "feature config", "no encoder", "model config"],
)
def test_checkpoint_metadata_is_checked_before_use(tmp_path, change, wrong):
    params = {"w": jnp.ones(3)}
    if wrong == "model":  # a fine-tuned encoder's weights are there; the head's config is not
        params["encoder"] = {"b": jnp.ones(2)}
    checkpoint.save_best(tmp_path, 1, {"params": params}, dict(META, **change))
    if wrong is None:
        match = "its feature config is not msjax's .*bogus"
    elif wrong in ("encoder", "model"):
        missing = "'encoder'" if wrong == "encoder" else "'lstm_hidden'"
        match = f"best/1: its model or encoder config is not msjax's \\(KeyError: {missing}\\)"
    else:
        match = f"best/1: its metadata has wrong fields: {wrong}"
    with pytest.raises(CheckpointError, match=match):
        Predictor(tmp_path)


def test_json_nested_too_deep_is_one_error(tmp_path, ssl_dir):
    """The json module recurses per level and raises RecursionError, not ValueError."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "list.jsonl").write_text(deep + "\n")
    with pytest.raises(DataError, match="list.jsonl:1: not a JSON object"):
        manifest.read_rows(tmp_path / "list.jsonl")
    (ssl_dir / "config.json").write_text(deep)
    with pytest.raises(CheckpointError, match="config.json: unreadable JSON"):
        load_ssl(ssl_dir)
    (tmp_path / checkpoint.MANIFEST).write_text(deep)
    with pytest.raises(CheckpointError, match="sha256.json: unreadable checkpoint manifest"):
        checkpoint.verify(tmp_path)
