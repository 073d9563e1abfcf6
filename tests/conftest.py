"""Shared test helpers: fast compilation, the real-data folder, a tiny run configuration
and one trained workdir.

One persistent XLA compilation cache serves the whole session, this process and every
command the tests start (they inherit its environment): the tiny runs compile the same
programs again and again, and a cached program is read instead (results are unchanged,
the cache holds the compiled executables of identical programs).

The end-to-end runs use the embedded synthetic corpus at a tiny size (3 speakers, 2
utterances per emotion, 1 s segments, a tiny random encoder, small images) with
2 stratified folds and 2 epochs, so a run takes well under a minute.
"""

import csv
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from msjax import runtime

REPO = Path(__file__).resolve().parents[1]
# Real corpora for the tests: ../shared/data beside the repository, or $MSJAX_TEST_DATA.
TEST_DATA = Path(os.environ.get("MSJAX_TEST_DATA") or REPO.parent / "shared" / "data")


# jax's persistent cache settings, as environment variables so the commands inherit them.
# A size limit turns on the cache's file lock, which concurrent processes need (a
# reader could otherwise see a half-written entry).
_COMPILATION_CACHE = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30),
}
_CACHE_KEY = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Sets msjax's XLA flags as the commands do (before JAX starts; the commands the
    tests run inherit them, and import this checkout) and opens the session's compilation
    cache (pytest-xdist workers share their controller's, inherited in
    JAX_COMPILATION_CACHE_DIR)."""
    runtime.apply_xla_defaults()
    # The commands the tests start import this checkout's msjax, whatever is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = tempfile.mkdtemp(prefix="msjax-xla-cache-")
    config.stash[_CACHE_KEY] = directory
    os.environ.update(_COMPILATION_CACHE, JAX_COMPILATION_CACHE_DIR=directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", 4 << 30)


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_CACHE_KEY, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


def unavailable(message: str) -> None:
    """Skips the test for want of what `message` names, except under CI (CI=true), where
    everything a test needs is provided and a missing piece fails it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def shared_corpus(name: str) -> Path:
    """The real corpus `name` under TEST_DATA. Missing, its tests skip with the place it
    is expected (`unavailable`)."""
    path = TEST_DATA / name
    if not path.is_dir():
        unavailable(f"{path} not found (set MSJAX_TEST_DATA to the folder holding {name}/)")
    return path


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    """The real EMODB copy (see shared_corpus)."""
    return shared_corpus("emodb")


PRODUCT_OP = re.compile(r"stablehlo\.(dot_general|convolution)\b")
TENSOR_TYPE = re.compile(r"tensor<(?:[0-9]+x)*(bf16|f32|f64|f16)>")


def products(program: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """(kind, operand dtypes, full precision requested) of every product in StableHLO."""
    found = []
    for line in program.splitlines():
        match = PRODUCT_OP.search(line)
        if match:
            found.append((match.group(1), _operand_dtypes(line), "HIGHEST" in line))
    return found


FUNCTION = re.compile(r"func\.func (?:public |private )?@([\w.$-]+)\(")
LOCATION = re.compile(r'loc\((#loc\d+|"[^"]*")')
LOCATION_ALIAS = re.compile(r'^(#loc\d+) = loc\("([^"]*)"')


def product_sites(program: str) -> list[tuple[tuple[str, ...], str]]:
    """(operand dtypes, site) of every product in StableHLO printed with its locations
    (`.as_text(debug_info=True)`). The site is the function holding the product and the
    name of the operation that made it, e.g. "main: jit(train_step)/jvp(MSEmoBoost)/
    .../conv_layers/0/btk,btl->bkl/dot_general"."""
    aliases = dict(m.groups() for m in map(LOCATION_ALIAS.match, program.splitlines()) if m)
    found, function = [], "?"
    for line in program.splitlines():
        if match := FUNCTION.search(line):
            function = match.group(1)
        elif PRODUCT_OP.search(line):
            where = LOCATION.findall(line)
            name = aliases.get(where[-1], where[-1].strip('"')) if where else "?"
            found.append((_operand_dtypes(line), f"{function}: {name}"))
    return found


def _operand_dtypes(line: str) -> tuple[str, ...]:
    signature = line.rsplit(" : ", 1)[-1]
    return tuple(TENSOR_TYPE.findall(signature.split("->")[0]))


@pytest.fixture(scope="module")
def fast_compile():
    """Small models compile far longer than they run: skip most XLA optimisation passes
    for the module (use with `pytestmark = pytest.mark.usefixtures("fast_compile")`)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# The tiny run: TINY on the command line, tiny_config() in-process.
TINY_FIELDS = {
    "synthetic.num_speakers": 3,
    "synthetic.utterances_per_emotion": 2,
    "protocol": "stratified",
    "num_folds": 2,
    "features.segment_seconds": 1.0,
    "image_size": (64, 96),
    "model.lstm_hidden": 8,
    "model.branch_dim": 16,
    "optim.num_epochs": 2,
    "optim.batch_size": 8,
    "optim.eval_batch_size": 8,
}
TINY = [f"--config.{name}={value}" for name, value in TINY_FIELDS.items()]


def tiny_config(changes: dict | None = None) -> ml_collections.ConfigDict:
    """The synthetic config with TINY's settings, then `changes` by dotted field name
    ({"optim.learning_rate": 0.5})."""
    from msjax.configs import synthetic

    config = synthetic.get_config()
    with config.unlocked():
        for name, value in {**TINY_FIELDS, **(changes or {})}.items():
            *parents, leaf = name.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value
    return config


def check_run_files(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """What train_and_evaluate does before it trains, in this process: the run files of
    `config` written to `workdir` or compared with it (msjax.train.run._check_workdir),
    counted among the workdir's jobs."""
    from msjax.experiment.config import ExperimentConfig
    from msjax.io import lock
    from msjax.train.run import _check_workdir, prepare_data, run_inputs

    config = ExperimentConfig.build(config)
    dataset, folds = prepare_data(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = run_inputs(dataset, _encoder(json.dumps(config.ssl.to_dict()), config.seed))
    with lock.share(workdir, lambda alone: _check_workdir(config, workdir, inputs, folds, alone)):
        pass


@functools.cache
def _encoder(ssl: str, seed: int):
    """load_configured_encoder, once per config (a random encoder compiles its init)."""
    from msjax.convert.encoders import load_configured_encoder

    return load_configured_encoder(ml_collections.ConfigDict(json.loads(ssl)), seed=seed)


def cpu_env(**extra: str) -> dict[str, str]:
    """This process's environment with JAX on the CPU, plus `extra`."""
    return dict(os.environ, JAX_PLATFORMS="cpu", **extra)


def bin_command(command: str, *args: str) -> list[str]:
    """The command line of bin/<command>."""
    return [sys.executable, str(REPO / "bin" / command), *args]


def run(
    command: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """bin/<command> in a fresh process, as a user runs it (in `cpu_env()` by default)."""
    return subprocess.run(
        bin_command(command, *args), capture_output=True, text=True, timeout=timeout,
        env=env or cpu_env(),
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def predicts_as_recorded(
    workdir: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> None:
    """bin/predict on fold 0's checkpoint gives, for the first utterance of its
    predictions.csv, the label and probabilities the run recorded (within 1e-4)."""
    fold = workdir / "fold_00"
    with open(fold / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    clip = workdir / "corpus" / "wav" / f"{row['uid']}.wav"
    done = ok(run("predict", f"--checkpoint={fold}", f"--input={clip}", env=env,
                  timeout=timeout))
    got = next(csv.DictReader(done.stdout.splitlines()))
    assert got["label"] == row["prediction"]
    labels = [k[2:] for k in row if k.startswith("p_")]
    np.testing.assert_allclose(
        [float(got[f"p_{n}"]) for n in labels], [float(row[f"p_{n}"]) for n in labels],
        atol=1e-4,
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished tiny bin/train run and what it printed (shared: training is the slow
    part). Tests that damage the workdir work on a copy."""
    workdir = tmp_path_factory.mktemp("train")
    return workdir, ok(run("train", f"--workdir={workdir}", "--tsne", *TINY))


@pytest.fixture(scope="session")
def trained(trained_run) -> Path:
    """The workdir of `trained_run`."""
    return trained_run[0]
