"""bin/ablate: the paper's ablations under the same folds and seeds.

    bin/ablate --no_attention                  # full model vs. no attention
    bin/ablate --no_mfcc --no_spectrogram      # vs. each single-branch model
    bin/ablate --baseline                      # vs. SSL features alone, mean-pooled
    bin/ablate                                 # every variant

Each variant trains in <workdir>/<variant>/ sharing one feature cache; the
comparison (paper Tables 3-4) goes to ablation.txt, ablation.csv and ablation.json.
"""

from __future__ import annotations

import copy
import csv

from absl import flags

from msjax.cli import common

common.define_run_flags()
flags.DEFINE_bool("no_attention", False, "Both branches without residual self-attention.")
flags.DEFINE_bool("no_mfcc", False, "Spectrogram guidance only.")
flags.DEFINE_bool("no_spectrogram", False, "MFCC guidance only.")
flags.DEFINE_bool("baseline", False, "No guidance: SSL features mean-pooled.")
FLAGS = flags.FLAGS

# variant -> model overrides.
VARIANTS = {
    "full": {},
    "no_attention": {"use_attention": False},
    "no_mfcc": {"use_mfcc": False},
    "no_spectrogram": {"use_spectrogram": False},
    "baseline": {"baseline": True},
}


def selected_variants() -> list[str]:
    """The full model plus the variants asked for (all when none is)."""
    asked = [name for name in VARIANTS if name != "full" and FLAGS[name].value]
    return ["full"] + (asked or [v for v in VARIANTS if v != "full"])


def main() -> int:
    from msjax import report
    from msjax.train.run import train_and_evaluate

    base = common.resolved_config()
    workdir = common.workdir(base)
    rows = []
    for variant in selected_variants():
        config = copy.deepcopy(base)
        with config.unlocked():
            config.model.update(VARIANTS[variant])
            # One cache for all variants: their features are the same.
            config.cache_dir = base.cache_dir or str(workdir / "cache")
            if base.dataset == "synthetic" and not base.data_dir:
                config.data_dir = str(workdir / "corpus")
        print(f"== {variant}", flush=True)
        results = train_and_evaluate(config, workdir / variant)
        if not results:  # a single --fold run: nothing to compare yet
            continue
        rows.append({
            "variant": variant,
            "WA": (100 * results["mean"]["wa"], 100 * results["std"]["wa"]),
            "UA": (100 * results["mean"]["ua"], 100 * results["std"]["ua"]),
            "F1": (100 * results["mean"]["f1"], 100 * results["std"]["f1"]),
        })
    if not rows:
        return 0
    table = report.format_table(rows, ["variant", "WA", "UA", "F1"])
    print(table, flush=True)
    (workdir / "ablation.txt").write_text(table + "\n")
    with open(workdir / "ablation.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "wa_mean", "wa_std", "ua_mean", "ua_std", "f1_mean", "f1_std"])
        for row in rows:
            writer.writerow([row["variant"], *row["WA"], *row["UA"], *row["F1"]])
    report.write_json(rows, workdir / "ablation.json")
    return 0


def run() -> None:
    common.run(main)
