"""bin/summarize: merge the finished folds of a workdir into its reports.

    bin/summarize --workdir=runs/emodb          # after bin/train --fold=k jobs
    bin/summarize --workdir=runs/ablate         # after bin/ablate --fold=k jobs

Writes results.json and confusion.{csv,png} (per variant, plus the ablation table,
for a bin/ablate workdir) from whatever folds have finished, and names the missing
ones. Rerun it as more folds finish; once all have, its files are those the whole
run writes.
"""

from __future__ import annotations

from absl import flags

from msjax.cli import common
from msjax.errors import UsageError

flags.DEFINE_string("workdir", None, "The run directory of bin/train or bin/ablate.")
FLAGS = flags.FLAGS


def main() -> int:
    from msjax.results.summary import summarize_workdir

    if not FLAGS.workdir:
        raise UsageError("--workdir is required")
    print(summarize_workdir(FLAGS.workdir), flush=True)
    return 0


def run() -> None:
    common.run(main)
