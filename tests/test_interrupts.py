"""Ctrl-C and SIGTERM: one line saying what was kept, exit 130 / 143, no traceback, and
the rerun of the same command resumes (msjax.runtime.interrupts)."""

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, bin_command, cpu_env, ok, run

from msjax.errors import Interrupted
from msjax.io import checkpoint
from msjax.runtime import interrupts

EPOCH = re.compile(r"fold \d+ epoch \d+: loss .*")
INTERRUPTED = re.compile(
    r"interrupted after fold (\d+) epoch (\d+) \((.+)\); rerun the same command to resume"
)


@pytest.fixture
def handlers():
    """msjax's SIGINT/SIGTERM handlers for the test, this process's own ones after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_signal_during_a_checkpoint_save_waits_for_its_manifest(tmp_path, monkeypatch,
                                                                    handlers):
    """SIGINT arriving once orbax has put the step in place, as its manifest is being
    hashed: the save ends whole (a resume would otherwise find a step without its
    manifest), then the interrupt is raised."""
    real_sha256, sent = checkpoint._sha256, []

    def hashing(path: Path) -> str:
        if not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)
        return real_sha256(path)

    monkeypatch.setattr(checkpoint, "_sha256", hashing)
    variables = {"params": {"w": np.arange(64, dtype=np.float32)}}
    ssl = dict(name="x", identity="y", normalize=True, finetune=False, seed=0, config={})
    metadata = dict(labels=["a"], features={}, image_size=[2, 2], model={}, ssl=ssl)
    with pytest.raises(Interrupted) as raised:
        checkpoint.save_best(tmp_path, 1, variables, metadata)
    assert sent and raised.value.exit_code == 130
    step_dir, meta = checkpoint.load_metadata(tmp_path)  # the manifest is there and matches
    assert step_dir == tmp_path / "best" / "1" and meta == metadata
    restored = checkpoint.restore_best(step_dir, checkpoint.abstract_like(variables))
    np.testing.assert_array_equal(restored["params"]["w"], variables["params"]["w"])


def _signalled(command: str, args: list[str], log: Path, ready: Callable[[], bool],
               signum: int, group: bool) -> tuple[int, str, list[str]]:
    """bin/<command> `args`, sent `signum` once `ready()`: to its process group as a
    terminal's Ctrl-C does (feature workers included), or to it alone as `kill` and
    batch schedulers do. Returns (exit code, stderr, its lines from the signal on)."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(bin_command(command, *args), stdout=subprocess.DEVNULL,
                                stderr=stderr, env=cpu_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not ready():
            assert proc.poll() is None, f"ended too soon: {log.read_text()[-4000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = log.read_text()
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    return code, text, text.splitlines()[before.count("\n"):]


def _interrupt_line(code: int, expected: int, text: str, after: list[str]) -> str:
    """The one line an interrupted command printed after the signal (epoch lines of an
    epoch being saved as it came may precede it), checked."""
    assert code == expected, text[-4000:]
    assert "Traceback" not in text and "Exception" not in text, text[-4000:]
    others = [line for line in after if not EPOCH.fullmatch(line)]
    assert len(others) == 1 and others[0] == text.splitlines()[-1], after
    return others[0]


@pytest.mark.slow  # two starts of a tiny training
def test_ctrl_c_in_training_says_what_was_kept_and_the_rerun_resumes(tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "train.log"
    args = [f"--workdir={workdir}", *TINY, "--config.optim.num_epochs=3"]
    code, text, after = _signalled(
        "train", args, log, lambda: "fold 0 epoch 1:" in log.read_text(), signal.SIGINT,
        group=True,
    )
    line = _interrupt_line(code, 130, text, after)
    kept = INTERRUPTED.fullmatch(line)
    assert kept and kept[1] == "0" and Path(kept[3]) == workdir / "fold_00", line
    checkpoint.verify(workdir / "fold_00" / "latest" / kept[2])  # what it names is whole
    assert not list(workdir.rglob(".lock"))
    done = ok(run("train", *args))  # the same command
    assert f"fold 0: resuming after epoch {kept[2]}" in done.stderr
    assert (workdir / "results.json").is_file()
    for fold in ("fold_00", "fold_01"):
        history = json.loads((workdir / fold / "result.json").read_text())["history"]
        assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.slow  # generates a corpus of 168 utterances
def test_sigterm_in_feature_extraction_says_what_is_cached(tmp_path):
    """bin/extract over 168 utterances (two feature worker processes), SIGTERM once the
    cache holds some: the line counts the utterances whose features a rerun finds."""
    workdir = tmp_path / "run"
    acoustic = workdir / "cache" / "acoustic"
    args = [f"--workdir={workdir}", "--config.synthetic.num_speakers=3",
            "--config.synthetic.utterances_per_emotion=8", "--ssl=random:tiny",
            "--config.feature_workers=2"]
    code, text, after = _signalled(
        "extract", args, tmp_path / "extract.log",
        lambda: acoustic.is_dir() and any(acoustic.rglob("*.npz")), signal.SIGTERM,
        group=False,
    )
    line = _interrupt_line(code, 143, text, after)
    kept = re.fullmatch(
        r"interrupted with the features of (\d+) of 168 utterances cached in (.+); rerun "
        r"the same command to resume", line,
    )
    assert kept and Path(kept[2]) == workdir / "cache", line
    cached = int(kept[1])
    assert 0 < cached < 168
    # Entries are counted once written: a signal between the write and the count leaves
    # one more on disk than the line says.
    assert cached <= len(list(acoustic.rglob("*.npz"))) <= cached + 1
