"""bin/predict: emotions of audio files from a trained fold checkpoint.

    bin/predict --checkpoint=runs/emodb/fold_03 --input=clip.wav
    bin/predict --checkpoint=runs/emodb/fold_03 --input=folder/ --output=preds.csv
    bin/predict --checkpoint=runs/emodb/fold_03 --input=files.txt --output=preds.jsonl
    bin/predict --checkpoint=runs/emodb/fold_03 --input=meeting.flac \\
        --timeline=segments.csv --timeline_plot=plots/

Rows are written as files are done. Bad files are reported with status "error" and
do not stop the run (exit code 3 when any failed); a truncated WAV, a clip under a
quarter of a segment and near-silent audio (RMS under -60 dBFS) are predicted with
status "warning" and the reason (msjax.inference.predict.input_warnings). An --output,
--timeline or plot that exists is refused unless --overwrite is given. Interrupted
(Ctrl-C, SIGTERM), the rows written so far stay whole. --checkpoint takes a fold
directory, its best/ or best/<epoch>; its files are checked against the SHA-256
manifest saved with them (--allow_unverified loads one saved without a manifest,
with a warning).

Segments of all files are packed into batches of --batch_size (one compiled program
whatever the files' lengths), and recordings longer than --window_seconds are read
window by window, so memory does not grow with a file's length. --timeline writes one
row per segment (path, start, end, probabilities; CSV, or JSONL by suffix) as segments
are done, and --timeline_plot draws each file's segments as <folder>/<file name>.png (a
repeated name gets -2, -3, ...). --compute_dtype=bfloat16 computes in bfloat16 with float32
accumulation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from msjax.cli import common
from msjax.errors import DataError, UsageError
from msjax.runtime import interrupts

flags.DEFINE_string(
    "checkpoint", None, "A fold directory of a training run, its best/ or best/<epoch>."
)
flags.DEFINE_multi_string("input", None, "Audio file, folder or .txt list; repeatable.")
flags.DEFINE_string("output", None, "Output .csv or .jsonl (default: CSV on stdout).")
flags.DEFINE_bool(
    "allow_unverified", False,
    "Load a checkpoint that has no SHA-256 manifest (saved before msjax wrote them) unchecked.",
)
flags.DEFINE_integer("batch_size", 8, "Segments per model batch.")
flags.DEFINE_float("window_seconds", 60.0, "Audio read at once from a long recording.")
flags.DEFINE_string(
    "compute_dtype", "float32",
    "float32, or bfloat16: faster on GPUs and CPUs with bfloat16 matrix units (e.g. "
    "Intel AMX), probabilities up to a few thousandths from float32's.",
)
flags.DEFINE_string("timeline", None, "Also write one row per segment to this .csv or .jsonl.")
flags.DEFINE_string("timeline_plot", None, "Folder for one PNG per file: emotions over time.")
flags.DEFINE_bool(
    "overwrite", False, "Replace an existing --output, --timeline or --timeline_plot PNG "
    "(refused otherwise)."
)
FLAGS = flags.FLAGS


def _kept(done: int, total: int, out: Path | None) -> None:
    """What an interrupt leaves (msjax.runtime.interrupts): the rows of the files done."""
    where = f" (their rows are in {out})" if out else ""
    again = "rerun with --overwrite" if out else "rerun"
    interrupts.kept(f"after {done} of {total} files{where}", f"{again} to predict them all")


def main() -> int:
    from msjax.inference.predict import (
        Predictor,
        RecordWriter,
        check_folder,
        check_output,
        expand_inputs,
        predict_files,
    )
    from msjax.inference.timeline import TimelineOutput, check_plots
    from msjax.runtime import progress

    if not FLAGS.checkpoint or not FLAGS.input:
        raise UsageError("--checkpoint and --input are required")
    out = Path(FLAGS.output) if FLAGS.output else None
    timeline = Path(FLAGS.timeline) if FLAGS.timeline else None
    plots = Path(FLAGS.timeline_plot) if FLAGS.timeline_plot else None
    check_output(out, overwrite=FLAGS.overwrite)
    check_output(timeline, "--timeline", "the timeline", overwrite=FLAGS.overwrite)
    check_folder(plots, "--timeline_plot", "timeline plots")
    paths = expand_inputs(FLAGS.input)
    if not paths:
        raise DataError(f"{', '.join(FLAGS.input)}: no audio files found")
    check_plots(paths, plots, FLAGS.overwrite)
    predictor = Predictor(
        FLAGS.checkpoint, FLAGS.allow_unverified,
        batch_size=FLAGS.batch_size, window_seconds=FLAGS.window_seconds,
        compute_dtype=FLAGS.compute_dtype,
    )
    writer = RecordWriter(out, predictor.labels)
    segments = TimelineOutput(timeline, plots, paths, predictor.labels,
                              predictor.feature_cfg.segment_seconds)
    bar = progress.bar(total=len(paths), desc="predict", unit="file")
    failed, hours = 0, 0.0
    _kept(0, len(paths), out)
    results = predict_files(predictor, paths, on_segments=segments.add_segments)
    try:
        for index, result in enumerate(results):
            record = result.record
            writer.write(record)
            _kept(index + 1, len(paths), out)
            segments.add(index, result)
            if record["status"] != "ok":
                bar.write(f"{record['status']}: {record['error']}", file=sys.stderr)
            failed += record["status"] == "error"
            hours += result.seconds / 3600
            bar.update()
            bar.set_postfix_str(f"{hours:.2f} h of audio", refresh=False)
    finally:
        results.close()  # ends the thread reading ahead, also when interrupted
        bar.close()
        writer.close()
        segments.close()
    return DataError.exit_code if failed else 0


def run() -> None:
    common.run(main)
