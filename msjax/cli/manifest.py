"""bin/manifest: write a supported corpus as an editable manifest (CSV, TSV or JSONL).

    bin/manifest --dataset=ravdess --data_dir=RAVDESS --output=ravdess.csv
    bin/train --dataset=manifest --data_dir=ravdess.csv

Paths below the output's folder are written relative to it, others absolute. Edit the
file (drop rows, merge labels, add a split column) and train on it with
--dataset=manifest.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from msjax.cli import common
from msjax.data import DATASETS
from msjax.errors import UsageError

flags.DEFINE_enum("dataset", None, DATASETS, "Corpus to list.")
flags.DEFINE_string("data_dir", None, "Corpus root directory (a manifest file for 'manifest').")
flags.DEFINE_string("output", None, "Manifest to write: .csv, .tsv or .jsonl.")
flags.DEFINE_bool("allow_count_mismatch", False, "List a copy whose counts differ.")
flags.mark_flags_as_required(["dataset", "data_dir", "output"])
FLAGS = flags.FLAGS


def main() -> int:
    from msjax.data import load_dataset, manifest

    output = Path(FLAGS.output)
    if output.suffix.lower() not in manifest.FORMATS:
        raise UsageError(f"--output={output}: a manifest ends in {', '.join(manifest.FORMATS)}")
    dataset = load_dataset(
        FLAGS.dataset, Path(FLAGS.data_dir), allow_count_mismatch=FLAGS.allow_count_mismatch
    )
    manifest.write(manifest.dataset_rows(dataset, output.parent), output)
    counts = ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items())
    print(
        f"{output}: {len(dataset)} rows of {dataset.name}, {len(dataset.speakers)} speakers "
        f"({counts})"
    )
    return 0


def run() -> None:
    common.run(main)
