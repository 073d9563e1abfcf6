"""Fold and seed jobs on one workdir: write-once run files, bin/summarize, --seeds
(tiny runs; see conftest.py)."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, bin_command, check_run_files, cpu_env, ok, run, tiny_config

from msjax.errors import UsageError
from msjax.io import lock

_REPORTS = ("results.json", "confusion.csv", "confusion.png")


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _without_seconds(results: dict) -> dict:
    """results.json minus the one field that is a measured time."""
    return {k: v for k, v in results.items() if k != "seconds"}


# One writer of `write_once` in a process of its own. Writers start together, and the
# step that puts a writer's file in place (a link, rename or replace) waits until every
# writer has reached it: a check-then-write race gets the widest window it can have.
_WRITER = r"""
import os, sys, time
from pathlib import Path
from msjax.io.files import write_once

path, gate, k, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def wait_for_all(step):
    (gate / f"{step}.{k}").touch()
    deadline = time.monotonic() + 20
    while len(list(gate.glob(f"{step}.*"))) < n and time.monotonic() < deadline:
        time.sleep(0.002)

def gated(place):
    def call(*args, **kwargs):
        wait_for_all("place")
        return place(*args, **kwargs)
    return call

for name in ("link", "rename", "replace"):
    setattr(os, name, gated(getattr(os, name)))
wait_for_all("start")
existing = write_once(path, f"writer {k}\n".encode() * 1000, "the test file")
sys.stdout.write("won" if existing is None else existing.decode())
"""


def test_write_once_has_one_winner_among_processes(tmp_path):
    path, gate, n = tmp_path / "run" / "config.json", tmp_path / "gate", 8
    gate.mkdir()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(gate), str(k), str(n)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for k in range(n)
    ]
    got = [w.communicate(timeout=120) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err for _, err in got]
    winners = [k for k, (out, _) in enumerate(got) if out == "won"]
    assert len(winners) == 1, f"writers {winners} each created the file"
    content = path.read_text()
    assert content == f"writer {winners[0]}\n" * 1000
    assert all(out == content for out, _ in got if out != "won")
    assert os.listdir(path.parent) == ["config.json"]  # no temporary file left


def test_summarize_rewrites_the_whole_runs_reports_byte_for_byte(trained, tmp_path):
    workdir = shutil.copytree(trained, tmp_path / "run")
    for name in _REPORTS:
        (workdir / name).unlink()
    done = ok(run("summarize", f"--workdir={workdir}"))
    assert "2 trainings, all finished" in done.stdout
    for name in _REPORTS:
        assert (workdir / name).read_bytes() == (trained / name).read_bytes(), name


def test_summarize_merges_finished_folds_and_names_missing_ones(trained, tmp_path):
    workdir = shutil.copytree(trained, tmp_path / "run")
    shutil.rmtree(workdir / "fold_01")
    done = ok(run("summarize", f"--workdir={workdir}"))
    assert "missing fold_01" in done.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["missing"] == ["fold_01"] and results["num_folds"] == 2
    assert [f["fold"] for f in results["folds"]] == [0]
    assert results["mean"]["ua"] == _result(trained / "fold_00")["ua"]
    assert results["std"]["ua"] == 0.0

    done = run("summarize", f"--workdir={tmp_path / 'nothing'}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no run here" in done.stderr
    (workdir / "fold_00" / "result.json").write_text('{"fold": 0, "ua": null}')
    done = run("summarize", f"--workdir={workdir}")
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert f"{workdir / 'fold_00' / 'result.json'}: not a fold result" in done.stderr


def test_fold_job_with_another_config_or_folds_is_refused(trained, tmp_path):
    workdir = shutil.copytree(trained, tmp_path / "run")
    shutil.rmtree(workdir / "fold_01")
    done = run("train", f"--workdir={workdir}", *TINY, "--fold=1",
               "--config.optim.learning_rate=0.5")
    assert done.returncode == 2, done.stderr
    assert "(optim.learning_rate: 0.001 -> 0.5), and fold_00 has started training" in done.stderr
    folds = json.loads((workdir / "folds.json").read_text())
    first = folds["folds"][1]
    first["train"]["uids"][0], first["test"]["uids"][0] = (
        first["test"]["uids"][0], first["train"]["uids"][0])
    (workdir / "folds.json").write_text(json.dumps(folds))
    done = run("train", f"--workdir={workdir}", *TINY, "--fold=1")
    assert done.returncode == 2, done.stderr
    assert f"{workdir / 'folds.json'}: the run was started on different folds" in done.stderr
    assert not (workdir / "fold_01").exists()


@pytest.mark.slow  # two fold trainings side by side on the CI's two cores
def test_two_fold_jobs_at_once_then_summarize_match_the_sequential_run(trained, tmp_path):
    """Both jobs generate the synthetic corpus and fill the feature cache of one
    workdir at the same time."""
    workdir = tmp_path / "run"
    jobs = [
        subprocess.Popen(
            bin_command("train", f"--workdir={workdir}", *TINY, f"--fold={k}"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cpu_env(),
        )
        for k in (0, 1)
    ]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-4000:]
    # Whichever job finished last wrote the summary; bin/summarize writes the same.
    written = {name: (workdir / name).read_bytes() for name in _REPORTS}
    ok(run("summarize", f"--workdir={workdir}"))
    for name in _REPORTS:
        assert (workdir / name).read_bytes() == written[name], name

    results = json.loads((workdir / "results.json").read_text())
    sequential = json.loads((trained / "results.json").read_text())
    assert _without_seconds(results) == _without_seconds(sequential)
    assert (workdir / "confusion.csv").read_bytes() == (trained / "confusion.csv").read_bytes()
    for fold in ("fold_00", "fold_01"):
        assert _result(workdir / fold)["history"] == _result(trained / fold)["history"]
    assert not list(workdir.rglob(".*.tmp"))


@pytest.mark.slow  # two trainings of one fold
def test_seeds_train_each_fold_per_seed_and_average_over_them(trained, tmp_path):
    workdir = tmp_path / "run"
    ok(run("train", f"--workdir={workdir}", *TINY, "--fold=0", "--seeds=2",
           f"--config.data_dir={trained / 'corpus'}", f"--config.cache_dir={trained / 'cache'}"))
    runs = [_result(workdir / "fold_00" / f"seed_{s}") for s in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1]
    # Seed 0 is the base seed: the same training as the one-seed run.
    assert runs[0]["history"] == _result(trained / "fold_00")["history"]
    assert runs[1]["history"] != runs[0]["history"]
    done = ok(run("summarize", f"--workdir={workdir}"))
    assert "missing fold_01/seed_0, fold_01/seed_1" in done.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    assert [(f["fold"], f["seed"]) for f in results["folds"]] == [(0, 0), (0, 1)]
    mean = sum(r["ua"] for r in runs) / 2
    assert abs(results["mean"]["ua"] - mean) < 1e-12


# -- run files of a workdir that never trained, or did ------------------------------------

def test_a_run_that_never_trained_gives_way_to_the_corrected_command(trained, tmp_path, caplog):
    workdir = tmp_path / "run"
    corpus = {"data_dir": str(trained / "corpus")}
    check_run_files(tiny_config({**corpus, "optim.learning_rate": 0.5}), workdir)
    seed_0_folds = (workdir / "folds.json").read_bytes()
    # Stopped before training (a stale fold lock of a failed start does not count).
    lock_file = workdir / "fold_00" / lock.LOCK_NAME
    lock_file.parent.mkdir()
    lock_file.write_text('{"pid": 1, "host": "elsewhere"}')
    with caplog.at_level(logging.WARNING):
        check_run_files(tiny_config({**corpus, "seed": 1}), workdir)
    config = json.loads((workdir / "config.json").read_text())
    assert (config["optim"]["learning_rate"], config["seed"]) == (1e-3, 1)
    # The folds of seed 1, as a fresh workdir gets them.
    check_run_files(tiny_config({**corpus, "seed": 1}), tmp_path / "fresh")
    folds = (workdir / "folds.json").read_bytes()
    assert folds == (tmp_path / "fresh" / "folds.json").read_bytes() != seed_0_folds
    assert f"{workdir / 'config.json'}: replaced" in caplog.text
    assert "optim.learning_rate: 0.5 -> 0.001; seed: 0 -> 1" in caplog.text


def test_changed_config_is_refused_naming_fields_once_a_fold_trained(trained, tmp_path):
    workdir = shutil.copytree(trained, tmp_path / "run")
    changes = {"optim.learning_rate": 0.5, "model.lstm_hidden": 9, "ssl.layerdrop": 0.2,
               "image_size": (64, 128)}
    with pytest.raises(UsageError) as refused:
        check_run_files(tiny_config(changes), workdir)
    assert str(refused.value) == (
        f"{workdir / 'config.json'}: the run was started with a different config "
        '(image_size: [64, 96] -> [64, 128]; model.lstm_hidden: 8 -> 9; '
        'optim.learning_rate: 0.001 -> 0.5; and 1 more), and fold_00 has started training; '
        "use a new --workdir"
    )
    assert (workdir / "config.json").read_bytes() == (trained / "config.json").read_bytes()


_SHARER = """
import sys
from msjax.io import lock
with lock.share(sys.argv[1], lambda alone: print(alone, flush=True)):
    sys.stdin.read()
"""


def test_a_job_on_the_workdir_keeps_the_files_it_compared(trained, tmp_path):
    """While another job uses the workdir (here: one that wrote or compared the run
    files and is still preparing features), a different config is refused even though
    no fold has trained yet; once that job is gone, it replaces them."""
    workdir = tmp_path / "run"
    corpus = {"data_dir": str(trained / "corpus")}
    check_run_files(tiny_config(corpus), workdir)
    job = subprocess.Popen([sys.executable, "-c", _SHARER, str(workdir)], cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline() == "True\n"  # alone on the workdir
        with pytest.raises(UsageError, match=r"seed: 0 -> 1\), and another job is using"):
            check_run_files(tiny_config({**corpus, "seed": 1}), workdir)
        check_run_files(tiny_config(corpus), workdir)  # the same config joins it
    finally:
        job.communicate("", timeout=60)
    check_run_files(tiny_config({**corpus, "seed": 1}), workdir)
    assert json.loads((workdir / "config.json").read_text())["seed"] == 1
