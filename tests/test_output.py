"""What the commands print: plain lines without absl's prefixes, no other libraries'
chatter, progress bars only on a terminal, --quiet / --verbosity, and a last line
naming results.json (tiny runs; see conftest.py; bin/ablate --quiet in test_cli.py)."""

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY

ABSL_PREFIX = re.compile(r"[IWEF]\d{4} ")
# Everything bin/train may write on stderr at the default verbosity.
TRAIN_LINE = re.compile(
    r"\d+ classes: \w+ \d+(, \w+ \d+)*"
    r"|preparing features for \d+ utterances"
    r"|fold \d+ epoch \d+: loss \S+ acc \S+ val WA \S+ UA \S+ \(\d+\.\d s\)( \*)?"
    r"|fold \d+ seed \d+ \(test \S+\): WA \S+ UA \S+ F1 \S+, best epoch \d+ \(\d+ s\)"
    r"|run took \d+ s"
)
BAR = re.compile(r"\d+%\|")  # tqdm's "37%|"


def _results_line(workdir: Path) -> str:
    """The last line a finished run prints, from its results.json."""
    results = json.loads((workdir / "results.json").read_text())
    metrics = "  ".join(
        f"{name} {100 * results['mean'][key]:.2f} ± {100 * results['std'][key]:.2f}"
        for name, key in (("WA", "wa"), ("UA", "ua"), ("F1", "f1"))
    )
    return f"results: {workdir / 'results.json'}  {metrics}  (2 trainings, all finished)"


def test_a_run_in_a_pipe_prints_its_lines_only_and_ends_with_the_results(trained_run):
    workdir, done = trained_run
    for line in (done.stdout + done.stderr).splitlines():
        assert not ABSL_PREFIX.match(line), line
    # No bar, no line of jax, orbax, matplotlib (t-SNE and confusion plots) or absl.
    assert [line for line in done.stderr.splitlines() if not TRAIN_LINE.fullmatch(line)] == []
    epochs = [line for line in done.stderr.splitlines() if re.match(r"fold \d+ epoch ", line)]
    assert len(epochs) == 2 * 2  # folds x epochs
    assert "\r" not in done.stderr and not BAR.search(done.stderr)
    assert done.stdout.splitlines()[-1] == _results_line(workdir)


def _in_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """bin/<args> with stdout and stderr on a 120 x 40 pseudo-terminal; (exit code, what
    the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / args[0]), *args[1:]],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env,
    )
    os.close(slave)
    received, deadline = [], time.monotonic() + timeout
    try:
        while select.select([master], [], [], max(deadline - time.monotonic(), 0))[0]:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the process exited and closed the terminal
                break
            if not data:
                break
            received.append(data)
    finally:
        os.close(master)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    return process.wait(timeout=60), b"".join(received).decode(errors="replace")


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("terminal")
    code, shown = _in_terminal(["train", f"--workdir={workdir}", *TINY])
    assert code == 0, shown[-4000:]
    return workdir, shown


@pytest.mark.slow  # a whole tiny training (2 folds) on a pseudo-terminal
def test_bars_with_an_eta_draw_on_a_terminal(terminal_run):
    workdir, shown = terminal_run
    for name, total in (("features", 42), ("SSL features", 42), ("fold 0 epoch 1/2", None)):
        count = rf"\d+/{total}" if total else r"\d+/\d+"
        # A bar under way: percentage, count, elapsed < remaining.
        assert re.search(rf"{name}: +\d+%\|.*\| {count} \[\d\d:\d\d<\d\d:\d\d", shown), name
    segments = [s for s in re.split(r"[\r\n]+", shown) if s.strip()]
    for segment in segments:
        assert not ABSL_PREFIX.match(segment), segment
    # Bars are cleared when done: the run still ends with its results.
    assert segments[-1] == _results_line(workdir)


_EMIT = """
import logging, sys, warnings
from msjax.runtime import progress
progress.configure(int(sys.argv[1]), sys.argv[2] == "quiet")
logging.getLogger("msjax.train.run").info("info line")
logging.getLogger("msjax.train.run").debug("debug line")
logging.getLogger("msjax.io.lock").warning("stale lock")
progress.line("record line")
logging.getLogger("jax._src.xla_bridge").warning("An NVIDIA GPU may be present")
logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
logging.getLogger("absl").info("orbax saving")
warnings.warn("a library warning")
"""


@pytest.mark.parametrize(
    "verbosity,quiet,shown",
    [
        (0, "", ["info line", "warning: stale lock", "record line"]),
        (0, "quiet", ["warning: stale lock", "record line"]),
        (-1, "", ["warning: stale lock", "record line"]),
        (1, "", ["info line", "debug line", "warning: stale lock", "record line",
                 "warning: jax._src.xla_bridge: An NVIDIA GPU may be present",
                 "py.warnings", "a library warning"]),
        (2, "", ["info line", "debug line", "warning: stale lock", "record line",
                 "warning: jax._src.xla_bridge: An NVIDIA GPU may be present",
                 "matplotlib.font_manager: generated new fontManager", "absl: orbax saving",
                 "py.warnings", "a library warning"]),
    ],
)
def test_verbosity_decides_which_lines_print(verbosity, quiet, shown):
    done = subprocess.run(
        [sys.executable, "-c", _EMIT, str(verbosity), quiet], capture_output=True, text=True,
        cwd=REPO, timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "", done.stderr
    everything = ("info line", "debug line", "stale lock", "record line", "NVIDIA",
                  "fontManager", "orbax", "library warning")
    for text in everything:
        assert (text in done.stderr) == any(text in s for s in shown), (text, done.stderr)
    for text in shown:
        assert text in done.stderr, (text, done.stderr)
