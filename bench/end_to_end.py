"""Benchmark: a whole `bin/train` cross-validation, cold and warm feature cache.

Runs `msjax.train.run.train_and_evaluate` (what `bin/train` runs) twice in child
processes on the same dataset with a fixed small epoch count:

  cold   empty workdir and empty feature cache: decoding, MFCC/spectrogram and frozen
         SSL extraction, then training;
  warm   empty workdir, the cache the cold run filled: training only.

For each it prints the wall time, the child's peak resident memory, and where the
time went, as the run reports it to `msjax.runtime.timing`: feature preparation, jitted train
steps, jitted eval steps (their first calls, i.e. compilation, apart), checkpoint
writes, and the rest (dataset loading, host-side batching that the prefetch thread did
not hide, metrics, reports). Step time is measured by blocking on each step's outputs,
so it includes the device time the training loop would otherwise overlap with host
work. The target is a warm run spending over 90% of its time in jitted steps.

Memory: batches are read from the cache one batch at a time (never the whole
dataset), so the warm run's peak is the runtime + model + one batch of every kind in
flight; `--subset` trains on a fraction of the utterances (every k-th, written as a
manifest the run loads) to show the peak does not grow with the data.

    python bench/end_to_end.py --config.data_dir=../shared/data/emodb
    python bench/end_to_end.py --config.fold=0 --config.cache_dir=CACHE  # one fold, cache kept
    python bench/end_to_end.py --runs=warm --config.cache_dir=CACHE      # all 10 folds, warm
    python bench/end_to_end.py --config.ssl.name=random:tiny \\
        --config.image_size='(128, 192)' --config.model.lstm_hidden=64

The run's config is configs/emodb.py with the benchmark's defaults (below, in
`bench_config`); `--config.x=y` overrides any field as for bin/train. Without
`--config.optim.patience` no fold stops early (patience = the epoch count). With no
pretrained weights offline, the encoder defaults to `random:base` (wav2vec2-base size,
random weights) and AlexNet to random init: the cost is the same as with the real
weights. An empty `cache_dir` means a temporary cache, removed afterwards.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

# Time the checkout this file belongs to, not whichever msjax happens to be installed.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msjax.configs import emodb  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "emodb"


def bench_config() -> ml_collections.ConfigDict:
    """EMODB's config, 2 epochs per fold, random weights of the real sizes."""
    config = emodb.get_config()
    config.data_dir = str(DEFAULT_DATA)
    config.ssl.name = "random:base"
    config.model.random_alexnet = True
    config.optim.num_epochs = 2
    return config


config_flags.DEFINE_config_dict("config", bench_config(), "The run's config (see the docstring).")
flags.DEFINE_float("subset", 1.0, "Fraction of the utterances to train on (every k-th).")
flags.DEFINE_string(
    "runs", "cold,warm",
    "Which runs, in order: 'cold,warm', or 'warm' alone over a --config.cache_dir already filled.",
)
flags.DEFINE_string("child", None, "Internal: run the config in this JSON file and report.")
flags.DEFINE_string("workdir", None, "Internal: the child's run directory.")
FLAGS = flags.FLAGS


def child(config_json: str, workdir: str) -> None:
    """Runs one timed cross-validation and prints its timings as JSON."""
    start = time.perf_counter()
    from msjax import runtime
    from msjax.runtime import timing
    from msjax.train import run

    runtime.configure()  # as bin/train does, before JAX starts

    config = ml_collections.ConfigDict(json.loads(Path(config_json).read_text()))
    with timing.recording({}) as totals:
        results = run.train_and_evaluate(config, Path(workdir))
    totals["wall"] = time.perf_counter() - start
    totals["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    totals["folds"] = len(results.get("folds", []))
    totals["ua"] = results.get("mean", {}).get("ua")
    print("RESULT " + json.dumps(totals), flush=True)


def subset_manifest(config: ml_collections.ConfigDict, fraction: float, path: Path) -> None:
    """Points `config` at a manifest of every k-th utterance of its dataset (k = 1/fraction)."""
    from msjax.data import load_dataset, loader_options, manifest

    dataset = load_dataset(config.dataset, config.data_dir, **loader_options(config))
    kept = type(dataset)(dataset.name, dataset.labels, dataset.utterances[:: round(1 / fraction)])
    manifest.write(manifest.dataset_rows(kept, path.parent), path)
    with config.unlocked():
        config.dataset, config.data_dir = "manifest", str(path)
        config.labels, config.label_map = ",".join(dataset.labels), ""


def measure(config_json: Path, label: str) -> dict:
    """Runs one child; returns its timings (with its own peak RSS) and process wall time."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, __file__, f"--child={config_json}", f"--workdir={workdir}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{label} run failed with exit code {done.returncode}")
        out = done.stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["process_wall"] = wall
    return result


def report(label: str, r: dict) -> None:
    wall = r["wall"]
    steps = r.get("train_step", 0.0) + r.get("eval_step", 0.0)
    compile_ = r.get("train_step_first", 0.0) + r.get("eval_step_first", 0.0)
    features = r.get("features_first", 0.0) + r.get("features", 0.0)
    checkpoints = r.get("checkpoint", 0.0) + r.get("checkpoint_first", 0.0)
    rest = wall - steps - compile_ - features - checkpoints
    outcome = f"{r['folds']} folds, mean UA {r['ua']:.3f}" if r["folds"] else "one fold"
    print(f"{label}: wall {wall:.1f} s (process {r['process_wall']:.1f} s), "
          f"peak RSS {r['peak_rss_mb']:.0f} MiB, {outcome}")
    for name, seconds in (
        ("jitted steps (train+eval)", steps), ("first calls (compile)", compile_),
        ("feature preparation", features), ("checkpoint writes", checkpoints),
        ("other (loading, host batching, metrics, reports)", rest),
    ):
        print(f"    {name:<50} {seconds:8.1f} s  {100 * seconds / wall:5.1f}%")
    print(f"    train steps {r.get('train_step_calls', 0)}, eval steps "
          f"{r.get('eval_step_calls', 0)}; steps share excluding compile and features: "
          f"{100 * steps / max(wall - compile_ - features, 1e-9):.1f}%")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.child:
        child(FLAGS.child, FLAGS.workdir)
        return
    config = FLAGS.config
    overrides = config_flags.get_override_values(FLAGS["config"])
    runs = FLAGS.runs.split(",")
    if not set(runs) <= {"cold", "warm"}:
        raise app.UsageError(f"--runs={FLAGS.runs}: expected cold and/or warm")
    cache = Path(config.cache_dir) if config.cache_dir else None
    if "cold" in runs and cache and cache.exists() and any(cache.iterdir()):
        raise app.UsageError(
            f"--config.cache_dir={cache} is not empty: a cold run needs an empty cache"
        )
    print(f"end to end on {config.data_dir}: {config.optim.num_epochs} epochs per fold, cpu "
          f"count {os.cpu_count()}, overrides {overrides or 'none'}, runs {FLAGS.runs}")
    with tempfile.TemporaryDirectory() as scratch, config.unlocked():
        if "optim.patience" not in overrides:
            config.optim.patience = config.optim.num_epochs
        if not cache:
            config.cache_dir = str(Path(scratch) / "cache")
        Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
        if FLAGS.subset < 1.0:
            subset_manifest(config, FLAGS.subset, Path(scratch) / "subset.csv")
        config_json = Path(scratch) / "config.json"
        config_json.write_text(config.to_json())
        for label in runs:
            report(label, measure(config_json, label))


if __name__ == "__main__":
    app.run(main)
