"""bin/train: cross-validated MS-EmoBoost training.

    bin/train                                  # embedded synthetic corpus, no downloads
    bin/train --dataset=emovo --data_dir=EMOVO --folds=10
    bin/train --dataset=emodb --data_dir=emodb --fold=3     # one fold, e.g. a cluster job
    bin/train --dataset=emodb --data_dir=emodb --dry_run    # print the folds and exit
    bin/train --workdir=runs/emodb --resume                 # continue a killed run
    srun --ntasks=8 bin/train --dataset=emodb ...           # one training, 8 processes
"""

from __future__ import annotations

import dataclasses

from absl import flags

from msjax.cli import common
from msjax.errors import UsageError

common.define_run_flags()
common.define_distributed_flags()
flags.DEFINE_bool("dry_run", False, "Print the folds (speakers, class counts) and exit.")
flags.DEFINE_bool(
    "resume", None, "Continue the run in --workdir with the config saved there (finished "
    "folds are skipped, a killed fold continues from its last epoch). Rerunning the same "
    "command also resumes; --noresume refuses a workdir that already holds folds."
)
flags.DEFINE_bool("tsne", None, "Also plot t-SNE of pooled features (paper Figs. 7-8).")
FLAGS = flags.FLAGS


def main() -> int:
    from msjax.io.rundir import RunDir
    from msjax.train.run import dry_run, train_and_evaluate  # after flags: heavy imports

    common.start_distributed()
    config = common.saved_config() if FLAGS.resume else common.resolved_config()
    if FLAGS.tsne is not None:
        config = dataclasses.replace(config, tsne=FLAGS.tsne)
    workdir = common.workdir(config)
    if FLAGS.dry_run:
        print(dry_run(config, workdir))
        return 0
    if FLAGS.resume is False and RunDir(workdir).fold_dirs():
        raise UsageError(f"{workdir}: holds an earlier run; use a new --workdir or --resume")
    train_and_evaluate(config, workdir)
    return 0


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
