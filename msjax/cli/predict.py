"""bin/predict: emotions of audio files from a trained fold checkpoint.

    bin/predict --checkpoint=runs/emodb/fold_03 --input=clip.wav
    bin/predict --checkpoint=runs/emodb/fold_03 --input=folder/ --output=preds.csv
    bin/predict --checkpoint=runs/emodb/fold_03 --input=files.txt --output=preds.jsonl

Rows are written as files are done. Bad files are reported with status "error" and
do not stop the run (exit code 3 when any failed); a truncated WAV is predicted from
what it holds, with status "warning". --checkpoint takes a fold directory, its
best/ or best/<epoch>; its files are checked against the SHA-256 manifest saved
with them (--allow_unverified loads one saved without a manifest, with a warning).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from msjax.cli import common
from msjax.errors import DataError, UsageError

flags.DEFINE_string(
    "checkpoint", None, "A fold directory of a training run, its best/ or best/<epoch>."
)
flags.DEFINE_multi_string("input", None, "Audio file, folder or .txt list; repeatable.")
flags.DEFINE_string("output", None, "Output .csv or .jsonl (default: CSV on stdout).")
flags.DEFINE_bool(
    "allow_unverified", False,
    "Load a checkpoint that has no SHA-256 manifest (saved before msjax wrote them) unchecked.",
)
FLAGS = flags.FLAGS


def main() -> int:
    from msjax.predict import Predictor, RecordWriter, check_output, expand_inputs, predict

    if not FLAGS.checkpoint or not FLAGS.input:
        raise UsageError("--checkpoint and --input are required")
    out = Path(FLAGS.output) if FLAGS.output else None
    check_output(out)
    paths = expand_inputs(FLAGS.input)
    if not paths:
        raise DataError(f"{', '.join(FLAGS.input)}: no audio files found")
    predictor = Predictor(FLAGS.checkpoint, FLAGS.allow_unverified)
    writer = RecordWriter(out, predictor.labels)
    failed = 0
    try:
        for record in predict(predictor, paths):
            writer.write(record)
            if record["status"] != "ok":
                print(f"{record['status']}: {record['error']}", file=sys.stderr)
            failed += record["status"] == "error"
    finally:
        writer.close()
    return DataError.exit_code if failed else 0


def run() -> None:
    common.run(main)
