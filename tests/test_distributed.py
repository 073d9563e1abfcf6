"""One training over several processes (msjax.runtime.distributed): the environment decides,
batches split by process, and two CPU processes on localhost (gloo collectives) against
one process with two devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, run

from msjax.data import load_dataset
from msjax.data.synthetic import generate_corpus
from msjax.features.acoustic import FeatureConfig
from msjax.features.cache import FeatureCache
from msjax.features.store import FeatureStore, iterate_batches
from msjax.runtime import distributed


@pytest.mark.parametrize(
    "flag, environ, expected",
    [
        (None, {}, False),
        (None, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        (None, {"SLURM_STEP_NUM_TASKS": "4"}, True),
        (None, {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "4"}, False),  # the batch script
        (False, {"SLURM_STEP_NUM_TASKS": "4"}, False),
        (True, {}, True),
    ],
)
def test_the_environment_decides_unless_the_flag_does(flag, environ, expected):
    assert distributed.wanted(flag, environ) is expected


def test_a_runtime_that_cannot_start_is_a_usage_error(tmp_path):
    done = run("train", f"--workdir={tmp_path}", "--distributed", "--num_processes=2")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--distributed: cannot start JAX's distributed runtime" in done.stderr
    assert not any(tmp_path.iterdir())


def test_process_rows_of_a_batch_make_the_whole_batch(tmp_path):
    """Two processes' rows of every batch, stacked, are the one-process batch, padding
    included (a process whose rows are all padding still gets a full-shape batch)."""
    root = tmp_path / "corpus"
    generate_corpus(root, num_speakers=1, utterances_per_emotion=1, seed=0)
    dataset = load_dataset("synthetic", root)
    store = FeatureStore(FeatureCache(None), FeatureConfig(segment_seconds=1.0), workers=1)
    entries = list(store.prepare(dataset).values())
    kinds = ["acoustic", "wav"]
    rng = lambda: np.random.default_rng(0)  # noqa: E731 - the same shuffle for each
    whole = list(iterate_batches(store, entries, 10, kinds, rng=rng()))
    halves = [
        list(iterate_batches(store, entries, 10, kinds, rng=rng(), rows=slice(a, a + 5)))
        for a in (0, 5)
    ]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 3
    assert sum(e.num_segments for e in entries) == 24  # the last batch: 4 rows, 6 padding
    assert halves[1][-1][0]["mask"].sum() == 0
    for (batch, uids), (first, uids0), (second, uids1) in zip(whole, *halves):
        assert uids == uids0 == uids1  # every process knows every row's utterance
        assert set(batch) == set(first) == set(second)
        for name in batch:
            assert first[name].shape[0] == second[name].shape[0] == 5
            np.testing.assert_array_equal(np.concatenate([first[name], second[name]]),
                                          batch[name])


# --- two processes against one: tiny runs of one fold ------------------------------

# bin/train counting what this process does (this test's instrument): a line per feature
# cache entry it writes in <COUNTS>.writes, and per pass over a split the valid batch rows
# it read in <COUNTS>.rows.
_COUNTING_TRAIN = """
import os, sys
from msjax.features import cache
from msjax.train import loop
counts = os.environ["COUNTS"]
put = cache.FeatureCache.put
def counted_put(self, kind, key, arrays):
    put(self, kind, key, arrays)
    with open(counts + ".writes", "a") as f:
        f.write(kind + "\\n")
batches = loop.iterate_batches
def counted_batches(*args, **kwargs):
    rows = 0
    for batch, uids in batches(*args, **kwargs):
        rows += int(batch["mask"].sum())
        yield batch, uids
    with open(counts + ".rows", "a") as f:
        f.write(f"{rows}\\n")
cache.FeatureCache.put = counted_put
loop.iterate_batches = counted_batches
from msjax.cli import train
sys.argv[0] = "bin/train"
train.run()
"""
_RUN = [*TINY, "--fold=0", "--config.optim.num_epochs=3"]


def _env(devices: int, counts: Path) -> dict:
    return dict(
        os.environ, JAX_PLATFORMS="cpu", COUNTS=str(counts),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",  # tiny models compile far longer than they run
    )


def _start(workdir: Path, devices: int, counts: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _COUNTING_TRAIN, f"--workdir={workdir}", *args],
        cwd=REPO, env=_env(devices, counts), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def _start_pair(workdir: Path, counts: Path, *args: str) -> list[subprocess.Popen]:
    """Two processes of one run, one CPU device each, coordinated on a free port;
    process i counts into <counts>_i."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return [
        _start(
            workdir, 1, Path(f"{counts}_{i}"), "--distributed",
            f"--coordinator_address=localhost:{port}", "--num_processes=2",
            f"--process_id={i}", *args,
        )
        for i in range(2)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for the processes; their stderr, each having exited 0."""
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return [err for _, err in outs]


def _counts(counts: Path, what: str) -> list[str]:
    path = Path(f"{counts}.{what}")
    return path.read_text().split() if path.exists() else []


def test_an_error_of_process_0_stops_the_other_in_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"dataset": "synthetic", "seed": 12345}')
    (workdir / "fold_00").mkdir()
    (workdir / "fold_00" / "result.json").write_text("{}")  # a fold has trained
    pair = _start_pair(workdir, tmp_path / "counts", *TINY)
    outs = [p.communicate(timeout=600) for p in pair]
    assert [p.returncode for p in pair] == [2, 2], [err[-3000:] for _, err in outs]
    errors = [err.strip().splitlines()[-1] for _, err in outs]
    assert "a different config (seed: 12345 -> 0), and fold_00 has started" in errors[0]
    assert errors[1] == (
        "error: process 0 stopped (workdir files, exit code 2); its error says why"
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, Path]:
    """Fold 0 trained by one process with two devices: its workdir and counts."""
    workdir = tmp_path_factory.mktemp("one") / "run"
    counts = workdir.parent / "counts"
    _finish([_start(workdir, 2, counts, *_RUN)])
    return workdir, counts


@pytest.mark.slow  # three tiny trainings of one fold, two of them as pairs of processes
def test_two_processes_match_one_and_resume_after_a_kill(one_process, tmp_path):
    workdir = tmp_path / "two"
    pair = _start_pair(workdir, tmp_path / "first", *_RUN)
    try:  # both killed once epoch 1 is saved, in the middle of the fold
        deadline = time.time() + 900
        while not (workdir / "fold_00" / "latest" / "1" / "sha256.json").exists():
            assert all(p.poll() is None for p in pair), [p.communicate()[1][-3000:] for p in pair]
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        for p in pair:
            p.send_signal(signal.SIGKILL)
            p.communicate()
    assert not (workdir / "fold_00" / "result.json").exists()
    # The cache was filled once, by process 0: one entry per utterance and kind.
    entries = len(list((workdir / "cache").rglob("*.npz")))
    assert entries == 3 * 42
    writes = [len(_counts(tmp_path / f"first_{i}", "writes")) for i in range(2)]
    assert writes == [entries, 0]

    logs = _finish(_start_pair(workdir, tmp_path / "rerun", "--resume", "--fold=0"))
    assert "fold 0: resuming after epoch" in logs[0]
    assert "resuming" not in logs[1]  # process 1 prints nothing but warnings
    assert not _counts(tmp_path / "rerun_0", "writes")  # features all read from the cache
    # Each process read its half of every batch: per pass over a split (epochs 2 and 3,
    # each validated, then the test split) the two processes' rows add up to one process's.
    mine = [[int(n) for n in _counts(tmp_path / f"rerun_{i}", "rows")] for i in range(2)]
    whole = [int(n) for n in _counts(one_process[1], "rows")][2:]  # epoch 1 was not redone
    assert len(mine[0]) == len(mine[1]) == len(whole) == 5
    assert [a + b for a, b in zip(*mine)] == whole
    assert all(0 < b <= a < a + b for a, b in zip(*mine))

    two = json.loads((workdir / "fold_00" / "result.json").read_text())
    one = json.loads((one_process[0] / "fold_00" / "result.json").read_text())
    assert two["epochs_run"] == one["epochs_run"] == 3
    for key in ("wa", "ua", "f1", "best_epoch", "confusion"):
        assert two[key] == one[key], key
    for a, b in zip(two["history"], one["history"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    assert sorted(p.name for p in (workdir / "fold_00").iterdir()) == sorted(
        p.name for p in (one_process[0] / "fold_00").iterdir()
    )
