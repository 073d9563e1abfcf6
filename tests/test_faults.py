"""Faults a user meets: bad flags, damaged inputs and checkpoints, full and read-only
disks, two runs at once. Each must end with its exit code (2 usage, 3 data) and one
`error:` line, no traceback, and lose nothing computed before."""

import asyncio
import collections
import dataclasses
import errno
import gc
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import soundfile as sf
from absl import flags
from conftest import (
    REPO,
    TINY,
    TINY_FIELDS,
    bin_command,
    check_run_files,
    cpu_env,
    ok,
    run,
    tiny_config,
    unavailable,
)

from msjax import inference
from msjax.configs import synthetic
from msjax.convert.torchvision import alexnet_params, save_params
from msjax.data import DATASETS, load_dataset, manifest
from msjax.errors import AudioError, CheckpointError, UsageError, WriteError
from msjax.experiment.config import ExperimentConfig
from msjax.features.acoustic import FeatureConfig
from msjax.features.audio import load_audio
from msjax.features.cache import FeatureCache
from msjax.io import checkpoint, lock
from msjax.io.files import json_bytes
from msjax.models.encoder import random_encoder
from msjax.train.run import prepare_data, train_and_evaluate

FLAGS = flags.FLAGS


def one_error(done, code: int, *needles: str) -> str:
    """Asserts the exit code and a single `error:` line holding every needle."""
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- 1. validation before writing ---------------------------------------------------------

@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config.optim.batch_size=0"], "--config.optim.batch_size=0"),
        (["--config.image_size=(0, 0)"], "--config.image_size"),
        (["--config.optim.learning_rate=nan"], "--config.optim.learning_rate=nan"),
        (["--config.optim.batch_sise=4"], "did you mean --config.optim.batch_size"),
        (["--fold=-5"], "--fold=-5"),
        (["--fold=7"], "--fold=7"),
    ],
)
def test_bad_config_is_refused_before_the_workdir_is_written(tmp_path, args, needle):
    workdir = tmp_path / "run"
    one_error(run("train", f"--workdir={workdir}", *TINY, *args), 2, needle)
    # Only the synthetic corpus may have been generated: no config.json locks the workdir.
    assert not (workdir / "config.json").exists()


@pytest.mark.slow  # the corrected command trains
def test_corrected_command_runs_after_refused_ones(trained, tmp_path):
    """Refused commands leave nothing in the workdir that the corrected one trips over."""
    args = [f"--workdir={tmp_path / 'run'}", *TINY, "--config.optim.num_epochs=1",
            f"--config.data_dir={trained / 'corpus'}", f"--config.cache_dir={trained / 'cache'}"]
    for bad in (["--config.optim.batch_size=0"], ["--config.image_size=(0, 0)"], ["--fold=-5"],
                ["--config.optim.learning_rate=nan"]):
        one_error(run("train", *args, *bad), 2, bad[0].split("=")[0])
    ok(run("train", *args))
    assert json.loads((tmp_path / "run" / "results.json").read_text())["folds"]


@pytest.mark.slow  # the corrected command trains a fold of the baseline for an epoch
def test_corrected_manifest_runs_on_the_workdir_of_the_refused_one(trained, tmp_path):
    """A clip that fails only when its features are computed stops a run after its run
    files were written; the command rerun once the clip is fixed trains on that workdir."""
    dataset = load_dataset("synthetic", trained / "corpus")
    rows = manifest.dataset_rows(dataset, tmp_path)
    bad = tmp_path / "bad.wav"
    sf.write(bad, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    rows[0]["path"] = bad.name
    manifest.write(rows, tmp_path / "list.csv")
    shutil.copytree(trained / "cache", tmp_path / "cache")
    # The SSL-only baseline: the fold trains in seconds.
    fields = {**TINY_FIELDS, "optim.num_epochs": 1, "model.baseline": True,
              "cache_dir": str(tmp_path / "cache")}
    args = ["--dataset=manifest", f"--data_dir={tmp_path / 'list.csv'}", "--ssl=random:tiny",
            f"--workdir={tmp_path / 'run'}", "--fold=0",
            *(f"--config.{k}={v}" for k, v in fields.items() if not k.startswith("synthetic."))]
    one_error(run("train", *args), 3, f"{bad}: contains NaN")
    assert (tmp_path / "run" / "inputs.json").exists()
    shutil.copyfile(dataset.utterances[0].path, bad)  # the clip, fixed
    done = ok(run("train", *args))
    assert f"{tmp_path / 'run' / 'inputs.json'}: replaced" in done.stderr
    result = json.loads((tmp_path / "run" / "fold_00" / "result.json").read_text())
    assert result["epochs_run"] == 1


def test_data_dir_is_checked_before_writing(tmp_path):
    workdir = tmp_path / "run"
    one_error(run("train", "--dataset=emodb", f"--workdir={workdir}"), 2,
              "--data_dir is required for --dataset=emodb")
    done = run("train", "--dataset=emodb", f"--data_dir={tmp_path / 'emodbb'}",
               f"--workdir={workdir}")
    one_error(done, 3, "emodbb")
    assert not workdir.exists()


def _config(**changes) -> ml_collections.ConfigDict:
    config = synthetic.get_config()
    with config.unlocked():
        for name, value in changes.items():
            *parents, leaf = name.split("__")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


@pytest.mark.parametrize(
    "field,value",
    [
        ("optim__batch_size", 0), ("optim__eval_batch_size", -1), ("optim__num_epochs", 0),
        ("optim__patience", 0), ("optim__learning_rate", float("inf")),
        ("optim__learning_rate", 0.0), ("image_size", (62, 96)), ("image_size", (64,)),
        ("fold", -2), ("num_folds", -1), ("seed", -1), ("protocol", "kfold"),
        ("validation", "train"), ("compute_dtype", "float16"), ("model__dropout", 1.0),
        ("model__lstm_hidden", 0), ("features__hop_length", 0), ("feature_workers", -1),
        ("ssl__remat_policy", "dots"),
    ],
)
def test_check_config_names_the_field(field, value):
    with pytest.raises(UsageError, match=_flag_pattern(field)):
        ExperimentConfig.build(_config(**{field: value}))


def _flag_pattern(field: str) -> str:
    """The start of the message naming `field` (a `_config` name) as the flag a user
    types: `--fold=`, `--config.<dotted field>=`, or for a feature field the features
    group followed by the field as a whole word."""
    if field == "fold":
        return "^--fold="
    if field.startswith("features__"):
        return rf"^--config\.features: .*\b{field.split('__')[-1]}\b"
    return "^" + re.escape(f"--config.{field.replace('__', '.')}=")


@pytest.mark.parametrize("name", DATASETS)
def test_typed_config_keeps_every_shipped_config_field(name):
    """config.json holds the typed config: the same fields and values as the ConfigDict
    (so workdirs saved from ConfigDicts still resume), read the same way."""
    config = importlib.import_module(f"msjax.configs.{name}").get_config()
    config.data_dir = "somewhere"
    typed = ExperimentConfig.build(config)
    assert json_bytes(typed.to_dict()) == json_bytes(json.loads(config.to_json_best_effort()))
    assert typed.optim.learning_rate == config.optim.learning_rate
    assert typed["ssl"]["name"] == config.ssl.name and dict(typed.model) == config.model.to_dict()
    assert typed.features == FeatureConfig(**config.features)


def test_config_saved_before_later_fields_takes_their_old_behaviour():
    saved = json.loads(synthetic.get_config().to_json_best_effort())
    for section, name in [(None, "seeds"), (None, "allow_damaged"), ("ssl", "remat"),
                          ("ssl", "remat_policy"), ("optim", "class_weights")]:
        del (saved[section] if section else saved)[name]
    typed = ExperimentConfig.build(ml_collections.ConfigDict(saved))
    assert (typed.seeds, typed.allow_damaged, typed.ssl.remat, typed.optim.class_weights) == (
        1, False, False, ""
    )
    assert "seeds" not in saved and typed.to_dict()["seeds"] == 1


def test_unknown_and_missing_config_fields_are_named():
    config = synthetic.get_config()
    with config.unlocked():
        config.optim.learning_rat = 0.1
    with pytest.raises(UsageError, match=re.escape(
        "--config.optim.learning_rat: no such config field; did you mean "
        "--config.optim.learning_rate?"
    )):
        ExperimentConfig.build(config)
    config = synthetic.get_config()
    del config.model["dropout"]
    with pytest.raises(UsageError, match=r"^--config\.model\.dropout: missing from the config$"):
        ExperimentConfig.build(config)


def test_model_config_reaches_the_module_by_name():
    """build_model passes each model field MSEmoBoost has under its own name, from the
    typed config and from a checkpoint's metadata as it was written before the type."""
    config = ExperimentConfig.build(synthetic.get_config())
    changed = {"branch_dim": 24, "lstm_hidden": 12, "dropout": 0.2, "use_attention": False}
    model_cfg = dataclasses.replace(config.model, **changed)
    encoder = random_encoder("random:tiny")
    for given in (model_cfg, model_cfg.to_dict()):
        model = inference.build_model(given, 4, config.features, encoder, False)
        assert {k: getattr(model, k) for k in changed} == changed
        assert model.zero_init_classifier is model_cfg.zero_init_classifier


def test_unknown_override_names_the_closest_field(tmp_path):
    done = run("predict", "--config.model.use_atention=false")  # predict has no --config
    one_error(done, 2, "Unknown command line flag 'config.model.use_atention'")
    done = run("train", f"--workdir={tmp_path}", "--noconfig.model.use_atention")
    one_error(done, 2, "--config.model.use_atention", "--config.model.use_attention")
    assert not list(Path(tmp_path).iterdir())


# -- helpers ------------------------------------------------------------------------------

def copy_run(trained: Path, dest: Path) -> Path:
    """A copy of the shared trained workdir that a test may damage."""
    shutil.copytree(trained, dest)
    return dest


def clip(trained: Path) -> Path:
    return sorted((trained / "corpus" / "wav").glob("*.wav"))[0]


def predict_main(*args: str) -> int:
    """bin/predict's main in this process (its flags parsed afresh)."""
    from msjax.cli import predict as cli

    FLAGS.unparse_flags()
    FLAGS(["predict", *args])
    try:
        return cli.main()
    finally:
        FLAGS.unparse_flags()


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(64):
        data[middle + i] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "variables").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


# -- 2. non-finite guards -----------------------------------------------------------------

@pytest.mark.slow  # compiles the train step
def test_exploding_training_stops_the_fold_with_a_data_error(trained, tmp_path):
    done = run("train", f"--workdir={tmp_path}", *TINY, "--config.optim.learning_rate=1e30",
               f"--config.data_dir={trained / 'corpus'}", f"--config.cache_dir={trained / 'cache'}")
    one_error(done, 3, "fold 0 epoch 1 step", "non-finite")
    assert not (tmp_path / "results.json").exists()
    assert not list(tmp_path.glob("fold_*/result.json"))


def test_loader_rejects_non_finite_and_absurd_samples(tmp_path):
    nan = np.full(1600, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(tmp_path / "huge.wav", np.full(1600, 1e20, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="absurd amplitude"):
        load_audio(tmp_path / "huge.wav")


def test_predict_marks_non_finite_output_as_an_error(trained, monkeypatch):
    from msjax.inference.predict import Predictor, predict

    predictor = Predictor(trained / "fold_00")
    monkeypatch.setattr(predictor, "segment_log_probs",
                        lambda batch: np.full((len(batch["wav"]), 7), np.nan))
    (record,) = predict(predictor, [clip(trained)])
    assert record["status"] == "error" and "non-finite output" in record["error"]
    assert "label" not in record


def test_checkpoint_with_non_finite_parameters_is_refused(trained, tmp_path):
    fold = copy_run(trained / "fold_00", tmp_path / "fold")
    step_dir, meta = checkpoint.load_metadata(fold)
    variables = checkpoint.restore_best(step_dir, None)
    leaf = jax.tree.leaves(variables["params"])[0]
    bad = jax.tree.map(lambda x: np.full_like(x, np.nan) if x is leaf else x, variables)
    shutil.rmtree(fold / "best")
    checkpoint.save_best(fold, int(step_dir.name), bad, meta)  # a valid manifest
    with pytest.raises(CheckpointError, match="non-finite"):
        checkpoint.restore_best(*checkpoint.load_metadata(fold)[:1], None)
    done = run("predict", f"--checkpoint={fold}", f"--input={clip(trained)}")
    one_error(done, 3, "non-finite", str(fold))


# -- 3. checkpoint integrity and --checkpoint forms ---------------------------------------

def _damage(step_dir: Path, how: str) -> Path:
    """Damages one part of a best/<epoch> checkpoint; returns the file the error names."""
    array = _largest_array_file(step_dir)
    if how == "flipped":
        _flip(array)
        return array
    if how == "truncated":
        array.write_bytes(array.read_bytes()[: array.stat().st_size // 2])
        return array
    if how == "metadata":
        (step_dir / "metadata" / "metadata").write_text("garbage{")
        return step_dir / "metadata" / "metadata"
    if how == "deleted":
        array.unlink()
        return array
    if how == "manifest":
        (step_dir / checkpoint.MANIFEST).write_text("garbage{")
        return step_dir / checkpoint.MANIFEST
    (step_dir / checkpoint.MANIFEST).unlink()
    return step_dir / checkpoint.MANIFEST


@pytest.mark.parametrize(
    "how", ["flipped", "truncated", "metadata", "deleted", "manifest", "no_manifest"]
)
def test_damaged_checkpoint_is_refused_naming_the_file(trained, tmp_path, how):
    fold = copy_run(trained / "fold_00", tmp_path / "fold")
    named = _damage(checkpoint.best_step_dir(fold), how)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_metadata(fold)
    assert str(named) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("how", ["flipped", "truncated", "metadata"])
def test_predict_refuses_a_damaged_checkpoint_in_one_line(trained, tmp_path, how):
    fold = copy_run(trained / "fold_00", tmp_path / "fold")
    named = _damage(checkpoint.best_step_dir(fold), how)
    done = run("predict", f"--checkpoint={fold}", f"--input={clip(trained)}")
    one_error(done, 3, str(named), "damaged")
    assert done.stdout == ""


def test_checkpoint_without_manifest_needs_allow_unverified(trained, tmp_path):
    """As saved before checkpoints carried SHA-256 manifests."""
    fold = copy_run(trained / "fold_00", tmp_path / "fold")
    manifest = checkpoint.best_step_dir(fold) / checkpoint.MANIFEST
    manifest.unlink()
    args = [f"--checkpoint={fold}", f"--input={clip(trained)}"]
    done = run("predict", *args)
    one_error(done, 3, str(manifest), "missing", "--allow_unverified")
    assert done.stdout == ""
    done = ok(run("predict", *args, "--allow_unverified"))
    (warning,) = done.stderr.strip().splitlines()
    assert str(manifest.parent) in warning and "not checked" in warning, warning
    expected = ok(run("predict", f"--checkpoint={trained / 'fold_00'}", f"--input={clip(trained)}"))
    assert done.stdout == expected.stdout and ",ok," in done.stdout


def test_allow_unverified_still_checks_what_it_can(trained, tmp_path):
    """A present manifest is still checked, and so are the parameters' values."""
    fold = copy_run(trained / "fold_00", tmp_path / "fold")
    step_dir = checkpoint.best_step_dir(fold)
    array = _largest_array_file(step_dir)
    _flip(array)
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.load_metadata(fold, allow_unverified=True)
    shutil.copy(_largest_array_file(checkpoint.best_step_dir(trained / "fold_00")), array)
    meta = checkpoint.load_metadata(fold)[1]
    variables = checkpoint.restore_best(step_dir, None)
    bad = jax.tree.map(lambda x: np.full_like(x, np.nan), variables)
    shutil.rmtree(fold / "best")
    checkpoint.save_best(fold, int(step_dir.name), bad, meta)
    (step_dir / checkpoint.MANIFEST).unlink()
    done = run("predict", f"--checkpoint={fold}", f"--input={clip(trained)}",
               "--allow_unverified")
    one_error(done, 3, "non-finite", str(fold))
    (step_dir / "metadata" / "metadata").write_text("[]")
    with pytest.raises(CheckpointError, match="metadata is not an msjax checkpoint"):
        checkpoint.load_metadata(fold, allow_unverified=True)


def test_checkpoint_forms(trained):
    step_dir = checkpoint.best_step_dir(trained / "fold_00")
    assert step_dir.parent.name == "best"
    for form in (trained / "fold_00", step_dir.parent, step_dir):
        assert checkpoint.best_step_dir(form) == step_dir
    for form in (trained / "fold_00" / "latest", next((trained / "fold_00" / "latest").iterdir())):
        with pytest.raises(CheckpointError, match="--resume continues from"):
            checkpoint.best_step_dir(form)
    done = ok(run("predict", f"--checkpoint={step_dir}", f"--input={clip(trained)}"))
    assert ",ok," in done.stdout


def test_latest_is_explained_by_bin_predict(trained):
    done = run("predict", f"--checkpoint={trained / 'fold_00' / 'latest'}",
               f"--input={clip(trained)}")
    one_error(done, 3, "latest/ is the training state", "pass the fold directory")


def test_damaged_resume_checkpoint_is_refused(trained, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    (workdir / "fold_01" / "result.json").unlink()  # fold 1 resumes from latest/
    latest = next((workdir / "fold_01" / "latest").iterdir())
    array = max((p for p in (latest / "state").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
    _flip(array)
    done = run("train", f"--workdir={workdir}", "--resume")
    one_error(done, 3, str(array))
    assert (workdir / "fold_00" / "result.json").exists()


# -- 4. one writer per workdir ------------------------------------------------------------

def _lock(directory: Path, pid: int, host: str | None = None) -> None:
    (directory / lock.LOCK_NAME).write_text(
        json.dumps({"pid": pid, "host": host or socket.gethostname()})
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # a real first run holds the lock
def test_second_train_on_a_workdir_is_refused_at_once(trained, tmp_path):
    workdir = tmp_path / "run"
    first = subprocess.Popen(
        bin_command("train", f"--workdir={workdir}", *TINY,
                    f"--config.data_dir={trained / 'corpus'}",
                    f"--config.cache_dir={trained / 'cache'}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cpu_env(),
    )
    try:
        start = time.time()
        while not (workdir / lock.LOCK_NAME).exists():
            assert first.poll() is None and time.time() - start < 120
            time.sleep(0.1)
        done = run("train", f"--workdir={workdir}", *TINY,
                   f"--config.data_dir={trained / 'corpus'}",
                   f"--config.cache_dir={trained / 'cache'}")
        one_error(done, 2, f"in use by pid {first.pid}", lock.LOCK_NAME)
    finally:
        first.kill()
        first.wait()


def test_stale_lock_is_taken_over(trained, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    _lock(workdir, _dead_pid())
    ok(run("train", f"--workdir={workdir}", *TINY))  # every fold done: summarises again
    assert not (workdir / lock.LOCK_NAME).exists()


def test_fold_jobs_lock_only_their_fold(trained, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    (workdir / "fold_00" / "result.json").unlink()
    _lock(workdir / "fold_00", os.getpid())  # a live fold-0 job
    ok(run("train", f"--workdir={workdir}", *TINY, "--fold=1"))
    done = run("train", f"--workdir={workdir}", *TINY, "--fold=0")
    one_error(done, 2, f"in use by pid {os.getpid()}")
    _lock(workdir, os.getpid(), "elsewhere")  # a whole run on another host
    one_error(run("train", f"--workdir={workdir}", *TINY, "--fold=1"), 2, "on elsewhere")


_CONTENDER = """
import sys, time
from pathlib import Path
from msjax.io import lock

root, me, n, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for r in range(rounds):
    while not (root / f"go{r}").exists():
        time.sleep(0.001)
    try:
        with lock.hold(root / f"d{r}"):
            (root / f"won{r}-{me}").touch()
            while len(list(root.glob(f"won{r}-*")) + list(root.glob(f"lost{r}-*"))) < n:
                time.sleep(0.001)  # everyone tries while the winner holds it
    except lock.LockedError:
        (root / f"lost{r}-{me}").touch()
"""


def test_racing_processes_never_share_a_lock(tmp_path):
    """8 processes race for one lock, 24 times: none there, a dead process's, an
    unreadable one just created (held: nobody wins) and an old unreadable one."""
    n, kinds = 8, ["none", "stale", "young_garbage", "old_garbage"]
    rounds = 6 * len(kinds)
    for r in range(rounds):
        directory = tmp_path / f"d{r}"
        directory.mkdir()
        kind = kinds[r % len(kinds)]
        if kind == "stale":
            _lock(directory, _dead_pid())
        elif kind.endswith("garbage"):
            (directory / lock.LOCK_NAME).write_text("")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(tmp_path), str(i), str(n),
                               str(rounds)], env=env) for i in range(n)]
    try:
        for r in range(rounds):
            if kinds[r % len(kinds)] == "old_garbage":
                old = time.time() - 60
                os.utime(tmp_path / f"d{r}" / lock.LOCK_NAME, (old, old))
            (tmp_path / f"go{r}").touch()
            start = time.time()
            while len(list(tmp_path.glob(f"won{r}-*")) + list(tmp_path.glob(f"lost{r}-*"))) < n:
                assert time.time() - start < 60 and {p.poll() for p in procs} <= {None, 0}, r
                time.sleep(0.01)
            winners = len(list(tmp_path.glob(f"won{r}-*")))
            assert winners == (0 if kinds[r % len(kinds)] == "young_garbage" else 1), (r, winners)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_unreadable_lock_counts_as_held_while_young(tmp_path):
    (tmp_path / lock.LOCK_NAME).write_text('{"pid": ')
    with pytest.raises(lock.LockedError, match="is being written"):
        lock.check_free(tmp_path)
    old = time.time() - 60
    os.utime(tmp_path / lock.LOCK_NAME, (old, old))
    lock.check_free(tmp_path)
    with lock.hold(tmp_path):
        assert lock.holder(tmp_path) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert not (tmp_path / lock.LOCK_NAME).exists()


# -- 5. disks and permissions -------------------------------------------------------------

def test_checkpoint_space_is_checked_before_orbax_writes(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1000))
    with pytest.raises(WriteError, match="cannot write the best checkpoint: No space left"):
        checkpoint.save_best(tmp_path, 1, {"params": {"w": np.zeros(64)}}, {"labels": ["a"]})
    assert not (tmp_path / "best").exists()


def test_failed_save_cleanup_outlasts_late_writes(tmp_path):
    """Writes still in flight when a save fails may recreate its temporary directory:
    here 8 times, 0.2 s after each removal (1.6 s in all, longer than _SETTLE_S)."""
    tmp = tmp_path / "3.orbax-checkpoint-tmp"

    def late_write():
        for _ in range(8):
            start = time.time()
            while tmp.exists() and time.time() - start < 5:
                time.sleep(0.01)
            time.sleep(0.2)
            (tmp / "d").mkdir(parents=True, exist_ok=True)

    tmp.mkdir()
    writer = threading.Thread(target=late_write)
    writer.start()
    checkpoint._remove_temporaries(tmp_path)
    writer.join()
    assert not list(tmp_path.iterdir())


def _unretrieved_failure(filename: str, gathered: bool) -> None:
    """A task (or a gather of it) that fails with nobody awaiting it, as the writes a
    failed orbax save abandons do, from a coroutine whose code reads as defined in
    `filename`."""
    namespace: dict = {}
    code = "async def write():\n    raise OSError(errno.EFBIG, 'File too large')\n"
    exec(compile(code, filename, "exec"), {"errno": errno}, namespace)
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_task(namespace["write"]())
        if gathered:
            future = asyncio.gather(future)
        loop.run_until_complete(asyncio.wait([future]))
    finally:
        loop.close()
    del future
    gc.collect()  # asyncio reports an unretrieved exception when the future is collected


@pytest.mark.parametrize("gathered", [False, True], ids=["task", "gather"])
def test_abandoned_orbax_writes_are_not_reported_but_other_failures_are(caplog, gathered):
    checkpoint._quiet_abandoned_writes()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _unretrieved_failure("orbax/checkpoint/_src/serialization/serialization.py", gathered)
        _unretrieved_failure("elsewhere/jobs.py", gathered)
    reports = [r for r in caplog.records if r.name == "asyncio"]
    assert len(reports) == 1, [r.getMessage() for r in reports]
    assert "exception was never retrieved" in reports[0].getMessage()
    assert "elsewhere/jobs.py" in "".join(traceback.format_exception(*reports[0].exc_info))


def test_abandoned_tensorstore_writes_of_a_failed_save_are_not_reported(
        caplog, tmp_path, monkeypatch):
    """tensorstore fails the futures of abandoned writes from its own threads: their
    exceptions have no Python traceback, only the path they were writing. Writes not
    yet started are coroutines never awaited."""
    def write_error(directory: Path) -> ValueError:
        return ValueError(f'OUT_OF_RANGE: Error writing "w0/0.0" at local file '
                          f'"{directory.absolute()}/3.orbax-checkpoint-tmp/d/0": '
                          "File too large [os_error_code='27']")

    loop = asyncio.new_event_loop()
    abandoned = []

    class FailingManager:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def save(self, step, args):
            for directory in (tmp_path / "best", tmp_path / "elsewhere"):
                future = loop.create_future()
                future.set_exception(write_error(directory))
                abandoned.append(future)
            abandoned.append(asyncio.sleep(0))  # a coroutine, never awaited
            raise write_error(tmp_path / "best")

    monkeypatch.setattr(checkpoint, "_manager", lambda directory: FailingManager())
    monkeypatch.setattr(checkpoint, "_SETTLE_S", 0.0)
    checkpoint._quiet_abandoned_writes()
    with caplog.at_level(logging.ERROR, logger="asyncio"), warnings.catch_warnings(
            record=True) as warned:
        warnings.simplefilter("always")
        with pytest.raises(WriteError, match="cannot write the best checkpoint: File too large"):
            checkpoint.save_best(tmp_path, 3, {"w": np.zeros(2)}, {})
        loop.close()
        abandoned.clear()
        gc.collect()
    assert not warned, [str(w.message) for w in warned]
    reports = [r for r in caplog.records if r.name == "asyncio"]
    assert len(reports) == 1, [r.getMessage() for r in reports]
    assert str(tmp_path / "elsewhere") in str(reports[0].exc_info[1])


@pytest.mark.slow  # two fold trainings, to show the rerun finishes
def test_failed_orbax_write_is_one_line_and_a_rerun_finishes(trained, tmp_path):
    """Simulated with a 12 KB file size limit: the OS refuses orbax's writes mid-save
    (EFBIG, as a full disk refuses them with ENOSPC) while others are in flight."""
    workdir = tmp_path / "run"
    args = [f"--workdir={workdir}", *TINY, "--fold=0", f"--config.data_dir={trained / 'corpus'}",
            f"--config.cache_dir={trained / 'cache'}"]
    done = subprocess.run(  # ulimit -f counts 1 KB blocks
        ["bash", "-c", 'ulimit -f 12 && exec "$@"', "bash", sys.executable,
         str(REPO / "bin" / "train"), *args], capture_output=True, text=True, env=cpu_env(),
    )
    one_error(done, 3, f"{workdir / 'fold_00' / 'best'}: cannot write the best checkpoint",
              "File too large")
    assert "Event loop is closed" not in done.stderr, done.stderr[-3000:]
    assert not list(workdir.rglob("*tmp*"))
    ok(run("train", *args))
    assert (workdir / "fold_00" / "predictions.csv").read_text() == (
        trained / "fold_00" / "predictions.csv").read_text()


_NO_SPACE_CHECK = """
import sys
from msjax.io import checkpoint
checkpoint._check_space = lambda *args: None  # as if the disk filled once the save began
sys.argv = ["train", *sys.argv[1:]]
from msjax.cli import train
train.run()
"""

# Mounts a 20 MB tmpfs on $1 and runs python ($2) on the rest; lists what is left there.
_ON_SMALL_TMPFS = """
mount -t tmpfs -o size=20m tmpfs "$1" || exit 99
mnt=$1; shift
"$@"; rc=$?
find "$mnt" -name '*tmp*' -printf 'left behind: %p\\n'
exit $rc
"""


@pytest.mark.slow  # compiles the train step
def test_disk_filling_up_during_an_orbax_write_is_one_line(trained, tmp_path):
    """A real full disk, mid-write: a 20 MB tmpfs in a private mount namespace (unshare;
    no root needed where user namespaces are allowed) holds the best checkpoint, not the
    resume one, and the check of free space before a save is switched off."""
    if not shutil.which("unshare"):
        unavailable("a disk filling up mid-write needs the unshare command (Debian package "
                    "util-linux)")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode:
        unavailable("a disk filling up mid-write needs a private mount namespace; "
                    f"`unshare -rm true` failed: {probe.stderr.strip()} (user namespaces "
                    "disabled, or not root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    workdir = mnt / "run"
    done = subprocess.run(
        ["unshare", "-rm", "bash", "-c", _ON_SMALL_TMPFS, "bash", str(mnt), sys.executable,
         "-c", _NO_SPACE_CHECK, f"--workdir={workdir}", *TINY, "--fold=0",
         f"--config.data_dir={trained / 'corpus'}", f"--config.cache_dir={trained / 'cache'}"],
        capture_output=True, text=True, cwd=REPO, env=cpu_env(),
    )
    one_error(done, 3, f"{workdir / 'fold_00' / 'latest'}: cannot write the resume checkpoint",
              "No space left on device")
    assert "Event loop is closed" not in done.stderr, done.stderr[-3000:]
    assert "left behind" not in done.stdout, done.stdout


def test_cache_write_on_a_full_disk_names_the_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(WriteError, match="cannot write a feature cache entry: No space left"):
        cache.put("acoustic", "ab" * 32, {"x": np.zeros(3)})
    assert not list(tmp_path.rglob("*.tmp"))


def test_unwritable_workdir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run("train", f"--workdir={blocker / 'run'}", *TINY)
    one_error(done, 3, str(blocker / "run"), "cannot write the synthetic corpus")


@pytest.fixture
def mount(tmp_path, request):
    """Mounts a tmpfs of the given size and options (needs root and the mount command;
    `unavailable` otherwise, naming what is missing)."""
    mounted = []

    def make(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        if not shutil.which("mount"):
            unavailable(f"{request.node.name} needs the mount command (Debian package mount)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode:
            unavailable(f"{request.node.name} mounts a tmpfs; mount failed: "
                        f"{done.stderr.strip()} (needs root, or CAP_SYS_ADMIN in a container)")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.slow  # compiles the train step
def test_real_full_and_read_only_disks(trained, tmp_path, mount):
    full = mount("full", "size=20m")  # holds the best checkpoint, not the resume one
    args = [*TINY, "--fold=0", f"--config.data_dir={trained / 'corpus'}",
            f"--config.cache_dir={trained / 'cache'}"]
    done = run("train", f"--workdir={full / 'run'}", *args)
    one_error(done, 3, str(full / "run" / "fold_00" / "latest"), "No space left on device")
    assert not list(full.rglob("*tmp*"))  # (the rerun is the simulated test's)
    read_only = mount("ro", "ro,size=1m")
    one_error(run("train", f"--workdir={read_only / 'run'}", *args), 3,
              "Read-only file system")
    done = run("predict", f"--checkpoint={trained / 'fold_00'}", f"--input={clip(trained)}",
               f"--output={read_only / 'preds.csv'}")
    one_error(done, 3, str(read_only / "preds.csv"), "Read-only file system")


def test_predict_checks_its_output_before_any_work(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run("predict", f"--checkpoint={tmp_path / 'no_such_checkpoint'}",
               f"--input={clip(trained)}", f"--output={blocker / 'preds.csv'}")
    one_error(done, 3, str(blocker / "preds.csv"), "cannot write predictions")
    done = run("predict", f"--checkpoint={trained / 'fold_00'}", f"--input={clip(trained)}",
               f"--output={tmp_path}")
    one_error(done, 2, "is a directory")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_predict_streams_rows_so_a_late_failure_keeps_them(trained, tmp_path, monkeypatch,
                                                           suffix):
    from msjax.inference.predict import Predictor

    clips = sorted((trained / "corpus" / "wav").glob("*.wav"))[:3]
    real = Predictor.segments
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    def dies_on_the_third(self, path):
        if path == clips[2]:
            raise full
        return real(self, path)

    monkeypatch.setattr(Predictor, "segments", dies_on_the_third)
    out = tmp_path / f"preds{suffix}"
    with pytest.raises(OSError) as raised:
        predict_main(f"--checkpoint={trained / 'fold_00'}", *[f"--input={c}" for c in clips],
                     f"--output={out}")
    assert raised.value is full  # the disk's error reaches the user, no other
    text = out.read_text()
    assert clips[0].name in text and clips[1].name in text and clips[2].name not in text


# -- 6. the smaller points ----------------------------------------------------------------

def test_every_audio_file_in_a_folder_gets_a_row(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clip(trained), folder / "good.wav")
    wav, rate = sf.read(clip(trained), dtype="float32")
    sf.write(folder / "speech.ogg", wav, rate, format="OGG")
    sf.write(folder / "speech.mp3", wav, rate, format="MP3")
    (folder / "speech.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A junk")
    data = (folder / "good.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    sf.write(folder / "huge.wav", np.full(1600, 1e20, np.float32), 16000, subtype="FLOAT")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "preds.jsonl"
    done = run("predict", f"--checkpoint={trained / 'fold_00'}", f"--input={folder}",
               f"--output={out}")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"good.wav", "speech.ogg", "speech.mp3", "speech.m4a",
                         "truncated.wav", "huge.wav"}
    assert rows["good.wav"]["status"] == "ok"
    assert rows["speech.ogg"]["status"] == "ok" and rows["speech.mp3"]["status"] == "ok"
    assert rows["speech.m4a"]["status"] == "error" and "speech.m4a" in rows["speech.m4a"]["error"]
    assert rows["truncated.wav"]["status"] == "warning"
    assert "truncated WAV" in rows["truncated.wav"]["error"] and rows["truncated.wav"]["label"]
    assert rows["huge.wav"]["status"] == "error" and "absurd amplitude" in rows["huge.wav"]["error"]
    assert sum(line.startswith("error:") for line in done.stderr.splitlines()) == 2
    assert sum(line.startswith("warning:") for line in done.stderr.splitlines()) == 1


def test_truncated_wav_stops_training_unless_allowed(trained, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(trained / "corpus", corpus)
    victim = sorted((corpus / "wav").glob("*.wav"))[5]
    victim.write_bytes(victim.read_bytes()[:3000])
    args = [f"--workdir={tmp_path / 'run'}", *TINY, f"--config.data_dir={corpus}", "--dry_run"]
    one_error(run("train", *args), 3, str(victim), "truncated WAV", "--allow_damaged")
    done = ok(run("train", *args, "--allow_damaged"))
    assert "41 utterances" in done.stdout and f"skipping {victim}" in done.stderr


def test_extract_counts_repaired_cache_entries(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained / "cache", workdir / "cache")
    entry = sorted((workdir / "cache" / "acoustic").rglob("*.npz"))[0]
    _flip(entry)
    done = ok(run("extract", f"--workdir={workdir}", *TINY,
                  f"--config.data_dir={trained / 'corpus'}"))
    assert "of which 1 replaced damaged ones" in done.stdout


# -- 7. what a run started from -----------------------------------------------------------

def _saved_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config `--resume` continues (bin/train's saved_config)."""
    return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))


def test_rerun_refuses_another_encoder_naming_both(trained, tmp_path):
    """Simulated in inputs.json: a local encoder directory whose weights were replaced."""
    workdir = copy_run(trained, tmp_path / "run")
    inputs = json.loads((workdir / "inputs.json").read_text())
    used, inputs["encoder"] = inputs["encoder"], "0" * 64
    (workdir / "inputs.json").write_text(json.dumps(inputs))
    done = run("train", f"--workdir={workdir}", "--resume")
    one_error(done, 2, f"the SSL encoder's weights ({'0' * 64} -> {used})")


def test_resume_names_the_clips_that_changed(trained, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    wavs = sorted((workdir / "corpus" / "wav").glob("*.wav"))
    for victim in wavs[:4]:  # one more than a message names
        wav, rate = sf.read(victim, dtype="float32")
        sf.write(victim, wav * 0.5, rate)
    # Simulated in inputs.json: a clip added, one removed and one relabelled since.
    inputs = json.loads((workdir / "inputs.json").read_text())
    clips = inputs["clips"]
    del clips[wavs[5].stem]
    clips["gone"] = {"label": "anger", "path": "old/gone.wav", "sha256": "0" * 64}
    relabelled = clips[wavs[6].stem]
    label = relabelled["label"]
    relabelled["label"] = saved = "fear" if label != "fear" else "anger"
    (workdir / "inputs.json").write_text(json.dumps(inputs))
    with pytest.raises(UsageError) as refused:
        train_and_evaluate(_saved_config(workdir), workdir)
    assert str(refused.value) == (
        f"{workdir / 'inputs.json'}: changed since the run started: 4 clips with other "
        f"audio: {wavs[0]}, {wavs[1]}, {wavs[2]}, and 1 more; 1 utterance added: "
        f"{wavs[5]}; 1 utterance removed: old/gone.wav; 1 utterance relabelled: "
        f"{wavs[6]} {saved} -> {label}, and fold_00 has started training; use a new --workdir"
    )
    assert (workdir / "results.json").read_text() == (trained / "results.json").read_text()


def _inputs_before_clip_hashes(workdir: Path) -> dict:
    """inputs.json as msjax wrote it before per-clip hashes: SHA-256 digests over the
    utterance list (uid and label lines) and over every clip's SHA-256, in corpus order."""
    dataset, _ = prepare_data(_saved_config(workdir), workdir)
    utterances, audio = hashlib.sha256(), hashlib.sha256()
    for utt in dataset.utterances:
        utterances.update(f"{utt.uid}\t{utt.label}\n".encode())
        audio.update(hashlib.sha256(utt.path.read_bytes()).hexdigest().encode())
    encoder = json.loads((workdir / "inputs.json").read_text())["encoder"]
    return {"utterances": utterances.hexdigest(), "audio": audio.hexdigest(), "encoder": encoder}


def test_inputs_json_from_before_clip_hashes_resumes_or_says_why_not(trained, tmp_path):
    workdir = copy_run(trained, tmp_path / "run")
    old = json_bytes(_inputs_before_clip_hashes(workdir))
    (workdir / "inputs.json").write_bytes(old)
    check_run_files(_saved_config(workdir), workdir)  # nothing changed: it resumes
    assert (workdir / "inputs.json").read_bytes() == old
    victim = sorted((workdir / "corpus" / "wav").glob("*.wav"))[0]
    wav, rate = sf.read(victim, dtype="float32")
    sf.write(victim, wav * 0.5, rate)
    with pytest.raises(UsageError) as refused:
        check_run_files(_saved_config(workdir), workdir)
    assert str(refused.value) == (
        f"{workdir / 'inputs.json'}: changed since the run started: the dataset's audio "
        "content (this inputs.json predates per-clip hashes, so the clips cannot be named), "
        "and fold_00 has started training; use a new --workdir"
    )


def test_bad_alexnet_weights_are_refused_before_anything_is_written(trained, tmp_path):
    workdir = tmp_path / "run"
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not weights\n")
    partial = tmp_path / "partial.npz"
    params = alexnet_params(None, jax.random.key(0))
    save_params({k: v for k, v in params.items() if k != "features_3"}, partial)
    for weights, problem in ((garbage, "not a zip archive"),
                             (partial, "missing: features_3/bias, features_3/kernel")):
        config = tiny_config(
            {"data_dir": str(trained / "corpus"), "model.alexnet_weights": str(weights)}
        )
        with pytest.raises(CheckpointError) as refused:
            train_and_evaluate(config, workdir)
        assert str(refused.value).startswith(f"{weights}: ")
        assert problem in str(refused.value) and "allow_pickle" not in str(refused.value)
        assert not workdir.exists()  # no feature work, no run files


def test_random_encoder_identity_comes_from_its_weights(monkeypatch):
    from msjax.convert.encoders import load_encoder
    from msjax.models import encoder as encoders

    seed0, seed1 = (load_encoder("random:tiny", seed=s).identity for s in (0, 1))
    assert seed0 != seed1
    # Same name and seed, other weights (as if the initialiser changed): another identity.
    key = jax.random.key
    monkeypatch.setattr(encoders.jax.random, "key", lambda seed: key(seed + 1))
    assert load_encoder("random:tiny", seed=0).identity == seed1
