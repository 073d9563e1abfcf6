"""Benchmark: a whole `bin/train` cross-validation, cold and warm feature cache.

Runs `msjax.train.run.train_and_evaluate` (what `bin/train` runs) twice in child
processes on the same dataset with a fixed small epoch count:

  cold   empty workdir and empty feature cache: decoding, MFCC/spectrogram and frozen
         SSL extraction, then training;
  warm   empty workdir, the cache the cold run filled: training only.

For each it prints the wall time, the child's peak resident memory, and where the
time went: feature preparation, jitted train steps, jitted eval steps (their first
calls, i.e. compilation, apart), checkpoint writes, and the rest (dataset loading,
host-side batching that the prefetch thread did not hide, metrics, reports). Step
time is measured by blocking on each step's outputs, so it includes the device time
the training loop would otherwise overlap with host work. The target is a warm run
spending over 90% of its time in jitted steps.

Memory: batches are read from the cache one batch at a time (never the whole
dataset), so the warm run's peak is the runtime + model + one batch of every kind in
flight; `--subset` trains on a fraction of the utterances to show the peak does not
grow with the data.

    python bench/end_to_end.py --data ../shared/data/emodb --epochs 2
    python bench/end_to_end.py --epochs 2 --set fold=0 --cache CACHE   # one fold, cache kept
    python bench/end_to_end.py --epochs 2 --runs warm --cache CACHE    # all 10 folds, warm
    python bench/end_to_end.py --data ../shared/data/emodb --epochs 2 \\
        --set ssl.name=random:tiny --set image_size='(128, 192)' --set model.lstm_hidden=64

`--set key=value` overrides config fields (values parsed as Python literals where
possible). With no pretrained weights offline, the encoder defaults to `random:base`
(wav2vec2-base size, random weights) and AlexNet to random init: the cost is the same
as with the real weights.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "emodb"


def _timed(fn, totals: dict, key: str, block: bool = False):
    """Wraps `fn` so its wall time accumulates in totals[key] (first call: key_first)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import jax

        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if block:
            jax.block_until_ready(out)
        name = key if f"{key}_calls" in totals else f"{key}_first"
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
        totals[f"{key}_calls"] = totals.get(f"{key}_calls", 0) + 1
        return out

    return wrapper


def child(args: argparse.Namespace) -> None:
    """Runs one instrumented cross-validation and prints its timings as JSON."""
    sys.path.insert(0, str(REPO))
    start = time.perf_counter()
    from configs import emodb
    from msjax import checkpoint
    from msjax.train import pipeline, run

    config = emodb.get_config()
    with config.unlocked():
        config.data_dir = args.data
        config.cache_dir = args.cache
        config.ssl.name = "random:base"
        config.model.random_alexnet = True
        config.optim.num_epochs = args.epochs
        config.optim.patience = args.epochs
        for item in args.set:
            key, value = item.split("=", 1)
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
            node = config
            *parents, last = key.split(".")
            for name in parents:
                node = node[name]
            node[last] = value
    totals: dict = {}
    make_steps = run.make_steps

    def timed_steps(*a, **k):
        train_step, eval_step = make_steps(*a, **k)
        return (
            _timed(train_step, totals, "train_step", block=True),
            _timed(eval_step, totals, "eval_step", block=True),
        )

    run.make_steps = timed_steps
    checkpoint.save_latest = _timed(checkpoint.save_latest, totals, "checkpoint")
    checkpoint.save_best = _timed(checkpoint.save_best, totals, "checkpoint")
    pipeline.FeatureStore.prepare = _timed(pipeline.FeatureStore.prepare, totals, "features")
    if args.subset < 1.0:
        load = run.load_dataset

        def subset(*a, **k):
            dataset = load(*a, **k)
            keep = dataset.utterances[:: round(1 / args.subset)]
            return type(dataset)(dataset.name, dataset.labels, keep)

        run.load_dataset = subset
        config.allow_count_mismatch = True
    results = run.train_and_evaluate(config, args.workdir)
    totals["wall"] = time.perf_counter() - start
    totals["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    totals["folds"] = len(results.get("folds", []))
    totals["ua"] = results.get("mean", {}).get("ua")
    print("RESULT " + json.dumps(totals), flush=True)


def measure(args: argparse.Namespace, cache: str, label: str) -> dict:
    """Runs one child; returns its timings (with its own peak RSS) and process wall time."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            sys.executable, __file__, "--child", "--data", args.data, "--cache", cache,
            "--workdir", workdir, "--epochs", str(args.epochs), "--subset", str(args.subset),
            *[f"--set={s}" for s in args.set],
        ]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=float, default=1.0, help="fraction of utterances")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument(
        "--cache", help="feature cache directory, kept afterwards (default: a temporary one)"
    )
    parser.add_argument(
        "--runs", default="cold,warm",
        help="which runs, in order: 'cold,warm', or 'warm' alone over a --cache already filled",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    runs = args.runs.split(",")
    if not set(runs) <= {"cold", "warm"}:
        parser.error(f"--runs={args.runs}: expected cold and/or warm")
    if "cold" in runs and args.cache and Path(args.cache).exists() and any(
        Path(args.cache).iterdir()
    ):
        parser.error(f"--cache={args.cache} is not empty: a cold run needs an empty cache")
    print(f"end to end on {args.data}: {args.epochs} epochs per fold, cpu count "
          f"{os.cpu_count()}, overrides {args.set or 'none'}, runs {args.runs}")
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache or scratch
        Path(cache).mkdir(parents=True, exist_ok=True)
        for label in runs:
            report(label, measure(args, cache, label))


if __name__ == "__main__":
    main()
