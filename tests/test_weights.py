"""Pretrained AlexNet on first use, without network or torch at run time: the torch-free
.pth reader against torch.load, the restricted unpickler, and fetch/cache behaviour on
local files (a download that fails, is corrupted or is interrupted caches nothing)."""

import collections
import hashlib
import io
import pickle
import urllib.error
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
import torchvision
from conftest import cpu_env, run

from msjax.convert import download
from msjax.convert.pth import read_pth
from msjax.convert.torchvision import load_alexnet_params, port_state_dict
from msjax.errors import CheckpointError


def assert_same(ours, ref, where="root"):
    """`ours` (read_pth) holds exactly `ref` (torch.load): types, keys, dtypes, values."""
    if isinstance(ref, torch.Tensor):
        ref = ref.detach()
        want = ref.float().numpy() if ref.dtype == torch.bfloat16 else ref.numpy()
        got = ours.astype(np.float32) if ref.dtype == torch.bfloat16 else ours
        assert got.dtype == want.dtype and got.shape == want.shape, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), where
        for key in ref:
            assert_same(ours[key], ref[key], f"{where}/{key}")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{where}/{i}")
    else:
        assert ours == ref, where


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_gives_exactly_torch_load_tensors(tmp_path, zip_format):
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    shared = torch.arange(10.0)
    state = collections.OrderedDict(
        transposed=base.t(),  # strides differ from a contiguous layout
        sliced=base[1:, 2:5],  # a storage offset
        shared_a=shared[:4],
        shared_b=shared[3:],  # the same storage as shared_a
        half=torch.randn(3, 2).half(),
        bf16=torch.randn(5).bfloat16(),
        f64=torch.randn(3, dtype=torch.float64),
        i64=torch.arange(5),
        i32=torch.arange(3, dtype=torch.int32),
        u8=torch.arange(4, dtype=torch.uint8),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(2, 2)),
        nested={"list": [torch.ones(2), 3, "x", (1.5, None), b"\x00\xffbytes"]},
    )
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    assert_same(read_pth(path), torch.load(path, weights_only=True))


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _legacy_stream(obj) -> bytes:
    """`obj` pickled as torch's legacy .pth stream with no storages."""
    header = (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    return b"".join(pickle.dumps(x, protocol=2) for x in (*header, obj, []))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_refuses_a_pickle_with_a_disallowed_global(tmp_path, zip_format):
    target = tmp_path / "written-by-the-pickle"
    path = tmp_path / "evil.pth"
    if zip_format:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", pickle.dumps({"w": _Payload(target)}, protocol=2))
    else:
        path.write_bytes(_legacy_stream({"w": _Payload(target)}))
    with pytest.raises(CheckpointError, match=r"refused to unpickle io.open \(only tensors") as err:
        read_pth(path)
    assert "\n" not in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_names_damaged_files(tmp_path, zip_format):
    good = tmp_path / "good.pth"
    torch.save({"a": torch.ones(64)}, good, _use_new_zipfile_serialization=zip_format)
    data = good.read_bytes()
    for name, damaged in (("cut.pth", data[:200]), ("short.pth", data[:-8])):
        (tmp_path / name).write_bytes(damaged)
        with pytest.raises(CheckpointError, match=f"{name}: damaged .pth") as err:
            read_pth(tmp_path / name)
        assert "\n" not in str(err.value)
    other = tmp_path / "other.pth"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="other.pth: not a PyTorch .pth"):
        read_pth(other)


@pytest.fixture(scope="module")
def alexnet_pth(tmp_path_factory):
    """A torchvision AlexNet .pth (features only: the classifier is not ported), its
    SHA-256 and its ported params."""
    torch.manual_seed(0)
    features = torchvision.models.alexnet().features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path_factory.mktemp("remote") / "alexnet-owt-test.pth"
    torch.save(state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, sha, port_state_dict(state, "torch")


def test_first_use_downloads_ports_and_caches(alexnet_pth, tmp_path, monkeypatch):
    path, sha, want = alexnet_pth
    out = download.imagenet_alexnet(tmp_path / "cache", url=path.as_uri(), sha256=sha)
    assert out == tmp_path / "cache" / f"alexnet_imagenet_{sha[:8]}.npz"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [out.name]  # no .pth kept
    got = load_alexnet_params(out)
    for layer in want:
        for name in want[layer]:
            np.testing.assert_array_equal(got[layer][name], want[layer][name])

    def offline(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    assert download.imagenet_alexnet(tmp_path / "cache", url=path.as_uri(), sha256=sha) == out


def test_corrupted_download_is_rejected_and_nothing_cached(alexnet_pth, tmp_path):
    path, sha, _ = alexnet_pth
    bad = tmp_path / "alexnet-owt-test.pth"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as err:
        download.imagenet_alexnet(cache, url=bad.as_uri(), sha256=sha)
    message = str(err.value)
    assert message.startswith(f"{bad.as_uri()}: SHA-256 mismatch (got ")
    assert "bin/port_alexnet --pth=alexnet-owt-test.pth" in message and "\n" not in message
    assert list(cache.iterdir()) == []


class _Broken(io.BytesIO):
    """A response that delivers one chunk, then loses the connection (or is interrupted)."""

    def __init__(self, error):
        super().__init__(b"x" * (3 << 20))
        self.error, self.calls = error, 0

    def read(self, size=-1):
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return super().read(size)


@pytest.mark.parametrize("error", [ConnectionResetError("reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_cache_entry(alexnet_pth, tmp_path, monkeypatch, error):
    _, sha, _ = alexnet_pth
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: _Broken(error))
    url = "https://example.invalid/a.pth"
    expected = CheckpointError if isinstance(error, Exception) else KeyboardInterrupt
    match = r"a.pth: download failed \(reset by peer\)" if expected is CheckpointError else None
    with pytest.raises(expected, match=match):
        download.imagenet_alexnet(tmp_path / "cache", url=url, sha256=sha)
    assert list((tmp_path / "cache").iterdir()) == []
    # fetch itself leaves no partial file beside its destination either
    with pytest.raises(expected, match=match):
        download.fetch(url, sha, tmp_path / "direct" / "a.pth")
    assert list((tmp_path / "direct").iterdir()) == []


def test_offline_error_is_one_line_naming_the_url_and_the_manual_route(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download.urllib.request, "urlopen", unreachable)
    monkeypatch.setenv("MSJAX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as err:
        download.alexnet_weights_file("imagenet", random_init=False)
    assert str(err.value) == (
        f"{download.ALEXNET_URL}: download failed ([Errno -3] Temporary failure in name "
        "resolution); download it by hand, port it with `bin/port_alexnet "
        "--pth=alexnet-owt-7be5be79.pth --out=alexnet.npz` and pass "
        "--config.model.alexnet_weights=alexnet.npz (or --config.model.random_alexnet=true "
        "to train AlexNet from scratch)"
    )
    assert list((tmp_path / "cache").iterdir()) == []


def test_weights_choice_and_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("MSJAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "msjax"
    monkeypatch.setenv("MSJAX_CACHE_DIR", str(tmp_path / "mine"))
    assert download.cache_dir() == tmp_path / "mine"
    cached = tmp_path / "mine" / f"alexnet_imagenet_{download.ALEXNET_SHA256[:8]}.npz"
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert download.alexnet_weights_file("imagenet", random_init=False) == cached
    assert download.alexnet_weights_file("imagenet", random_init=True) is None
    assert str(download.alexnet_weights_file("w.npz", random_init=True)) == "w.npz"
    with pytest.raises(CheckpointError, match="alexnet_weights is empty"):
        download.alexnet_weights_file("", random_init=False)
    assert download.alexnet_weights_file("", random_init=True) is None


def test_train_without_network_stops_before_feature_work(tmp_path):
    """The default imagenet weights on a machine that cannot connect: exit 3, one line,
    no cache entry, no features computed. A dead proxy stands for the missing network."""
    lines = ["path,emotion,speaker"]
    for speaker in ("s1", "s2", "s3"):
        for emotion in ("a", "b"):
            sf.write(tmp_path / f"{speaker}{emotion}.wav", np.zeros(1600), 16000)
            lines.append(f"{speaker}{emotion}.wav,{emotion},{speaker}")
    (tmp_path / "list.csv").write_text("\n".join(lines))
    inputs = [p.name for p in tmp_path.iterdir()]
    dead = "http://127.0.0.1:9"
    env = cpu_env(https_proxy=dead, http_proxy=dead, MSJAX_CACHE_DIR=str(tmp_path / "weights"))
    done = run(
        "train", "--dataset=manifest", f"--data_dir={tmp_path / 'list.csv'}",
        f"--workdir={tmp_path / 'run'}", "--ssl=random:tiny", timeout=300, env=env,
    )
    assert done.returncode == 3, done.stderr
    *before, last = done.stderr.strip().splitlines()
    assert not [line for line in before if "feature" in line], before  # none prepared
    assert last.startswith(f"error: {download.ALEXNET_URL}: download failed (")
    assert "bin/port_alexnet" in last
    assert list((tmp_path / "weights").iterdir()) == []
    # Nothing written: no workdir (so no cache, no features, no run files).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs + ["weights"])
