"""bin/predict: emotions of audio files from a trained fold checkpoint.

    bin/predict --checkpoint=runs/emodb/fold_03 --input=clip.wav
    bin/predict --checkpoint=runs/emodb/fold_03 --input=folder/ --output=preds.csv
    bin/predict --checkpoint=runs/emodb/fold_03 --input=files.txt --output=preds.jsonl

Bad files are reported in the output with status "error" and do not stop the run;
the exit code is 3 when any file failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from msjax.cli import common
from msjax.errors import DataError, UsageError

flags.DEFINE_string("checkpoint", None, "A fold directory (or its best/) of a training run.")
flags.DEFINE_multi_string("input", None, "Audio file, folder or .txt list; repeatable.")
flags.DEFINE_string("output", None, "Output .csv or .jsonl (default: CSV on stdout).")
FLAGS = flags.FLAGS


def main() -> int:
    from msjax.predict import Predictor, expand_inputs, predict, write_records

    if not FLAGS.checkpoint or not FLAGS.input:
        raise UsageError("--checkpoint and --input are required")
    paths = expand_inputs(FLAGS.input)
    if not paths:
        raise DataError(f"{', '.join(FLAGS.input)}: no audio files found")
    predictor = Predictor(FLAGS.checkpoint)
    records = list(predict(predictor, paths))
    write_records(records, predictor.labels, Path(FLAGS.output) if FLAGS.output else None)
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return DataError.exit_code if failed else 0


def run() -> None:
    common.run(main)
