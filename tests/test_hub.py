"""The hub route as users take it: `--ssl=org/name` resolved from a Hugging Face hub cache
laid out as huggingface_hub lays it out, offline, from bin/train to bin/predict; and a hub id
the cache lacks."""

import hashlib
import importlib.metadata
import os
import tomllib
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from conftest import REPO, TINY, cpu_env, ok, predicts_as_recorded, run
from packaging.requirements import Requirement

from msjax.convert.hf import load_ssl

REPO_ID = "tiny-org/wav2vec2-tiny"


def _blob_name(path: Path) -> str:
    """The hub's name for a file's blob: the SHA-256 of an LFS file (the weights), the git
    blob SHA-1 of any other."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hub_cache(cache: Path, repo_id: str, files: Path, commit: str) -> Path:
    """Puts the files of `files` into the hub cache `cache` as a download of `repo_id` at
    `commit` leaves them: blobs/<hash>, snapshots/<commit>/<name> relative links into
    blobs, refs/main holding the commit. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(files.iterdir()):
        blob = repo / "blobs" / _blob_name(file)
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A hub cache holding REPO_ID: a tiny random wav2vec2 saved by transformers."""
    saved = tmp_path_factory.mktemp("saved")
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).save_pretrained(saved)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(saved)
    root = tmp_path_factory.mktemp("hub")
    hub_cache(root, REPO_ID, saved, commit="0123456789abcdef0123456789abcdef01234567")
    return root


def test_hub_cache_is_laid_out_as_huggingface_hub_reads_it(cache):
    (repo,) = huggingface_hub.scan_cache_dir(cache).repos
    assert repo.repo_id == REPO_ID and set(repo.refs) == {"main"}
    (revision,) = repo.revisions
    names = {f.file_name for f in revision.files}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json"}
    snapshot = huggingface_hub.snapshot_download(REPO_ID, cache_dir=cache, local_files_only=True)
    assert Path(snapshot) == revision.snapshot_path


def test_hub_id_trains_and_predicts_offline_and_an_uncached_one_says_how_to_download(
    cache, tmp_path
):
    env = cpu_env(
        HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",  # tiny models compile far longer than they run
    )
    workdir = tmp_path / "run"
    args = [f"--workdir={workdir}", "--config.model.random_alexnet=true", *TINY, "--fold=0",
            "--config.optim.num_epochs=1"]
    # A hub id the cache lacks: one line naming it and the download, nothing written that
    # would refuse the corrected command.
    missing = run("train", *args, "--ssl=tiny-org/absent", env=env, timeout=300)
    assert missing.returncode == 3, missing.stderr[-3000:]
    line = missing.stderr.splitlines()[-1]
    assert [x for x in missing.stderr.splitlines() if x.startswith("error")] == [line]
    assert line.startswith(
        f"error: tiny-org/absent: not a directory, and as a hub id it is not in the hub "
        f"cache {cache} and offline (HF_HUB_OFFLINE)"
    ), missing.stderr[-3000:]
    assert "`hf download tiny-org/absent --local-dir DIR" in line
    assert "Traceback" not in missing.stderr
    assert not (workdir / "config.json").exists()

    ok(run("train", *args, f"--ssl={REPO_ID}", env=env, timeout=600))
    predicts_as_recorded(workdir, env=env, timeout=300)
    # The run's features came from the cached weights: the identity it recorded is theirs.
    inputs = (workdir / "inputs.json").read_text()
    snapshot = next((cache / ("models--" + REPO_ID.replace("/", "--")) / "snapshots").iterdir())
    assert load_ssl(snapshot).identity in inputs


def test_installed_huggingface_hub_is_in_the_declared_range():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (hub,) = [r for r in map(Requirement, declared) if r.name == "huggingface_hub"]
    assert hub.specifier.contains(importlib.metadata.version("huggingface_hub"))
