"""bin/ablate: the paper's ablations under the same folds and seeds.

    bin/ablate --no_attention                  # full model vs. no attention
    bin/ablate --no_mfcc --no_spectrogram      # vs. each single-branch model
    bin/ablate --baseline                      # vs. SSL features alone, mean-pooled
    bin/ablate                                 # every variant

Each variant trains in <workdir>/<variant>/ sharing one feature cache; the
comparison (paper Tables 3-4) goes to ablation.txt, ablation.csv and ablation.json,
with each variant's per-fold paired difference from the full model (msjax/results/ablation.py).
`--fold=k` jobs train fold k of each variant; bin/summarize then merges them.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from msjax.cli import common
from msjax.results.ablation import VARIANTS
from msjax.runtime import progress

common.define_run_flags()
common.define_distributed_flags()
flags.DEFINE_bool("no_attention", False, "Both branches without residual self-attention.")
flags.DEFINE_bool("no_mfcc", False, "Spectrogram guidance only.")
flags.DEFINE_bool("no_spectrogram", False, "MFCC guidance only.")
flags.DEFINE_bool("baseline", False, "No guidance: SSL features mean-pooled.")
FLAGS = flags.FLAGS


def selected_variants() -> list[str]:
    """The full model plus the variants asked for (all when none is)."""
    asked = [name for name in VARIANTS if name != "full" and FLAGS[name].value]
    return ["full"] + (asked or [v for v in VARIANTS if v != "full"])


def main() -> int:
    from msjax.io.rundir import RunDir
    from msjax.results.ablation import ablation_rows, read_fold_results, table_line, write_ablation
    from msjax.runtime import distributed
    from msjax.train.run import train_and_evaluate

    common.start_distributed()
    coordinator = distributed.current()
    base = common.resolved_config()
    workdir = common.workdir(base)
    rundir = RunDir(workdir)
    # One cache (and synthetic corpus) for all variants: their features are the same.
    shared = {"cache_dir": base.cache_dir or str(rundir.cache)}
    if base.dataset == "synthetic" and not base.data_dir:
        shared["data_dir"] = str(rundir.corpus)
    results = {}
    for variant in selected_variants():
        model = dataclasses.replace(base.model, **VARIANTS[variant])
        config = dataclasses.replace(base, model=model, **shared)
        if coordinator.is_main():
            progress.line("== %s", variant)
        variant_dir = rundir.variant(variant).root
        if not train_and_evaluate(config, variant_dir, coordinator):
            continue  # a single --fold run: nothing to compare yet
        results[variant] = read_fold_results(variant_dir)
    if not results or not coordinator.is_main():
        return 0
    print(write_ablation(ablation_rows(results), workdir), flush=True)
    print(table_line(workdir), flush=True)
    return 0


def run() -> None:
    common.run(main)
