"""The files of a run directory (a workdir): the one place that names them.

  config.json, inputs.json, folds.json   what the run was started with
  fold_XX/                               one fold's training (`FoldRunDir`), or with
  fold_XX/seed_<seed>/                   several seeds one per seed: best/, latest/,
                                         result.json, predictions.csv, confusion.csv
  results.json, confusion.{csv,png}      the summary over the finished trainings
  tsne_{plain,enhanced}.png              on request
  cache/, corpus/                        the default feature cache and synthetic corpus
  <variant>/, ablation.{txt,csv,json}    an ablation's run directories and its table

A fold directory's lock files are msjax.io.lock's (it locks any directory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from msjax.errors import CheckpointError
from msjax.io import lock

_FOLD = "fold_"
_BEST = "best"
_LATEST = "latest"
_RESULT = "result.json"
# The result.json of each fold's training, one seed or several.
FOLD_RESULTS = f"{_FOLD}*/{_RESULT}"
_SEED_RESULTS = f"{_FOLD}*/seed_*/{_RESULT}"


@dataclasses.dataclass(frozen=True)
class FoldRunDir:
    """One training of one fold (and seed): its checkpoints and test results."""

    root: Path

    @property
    def best(self) -> Path:
        """best/<epoch>/: the parameters and metadata predict needs."""
        return self.root / _BEST

    @property
    def latest(self) -> Path:
        """latest/<epoch>/: the state a resumed training continues from."""
        return self.root / _LATEST

    @property
    def result(self) -> Path:
        """result.json: written last, so its presence marks the training finished."""
        return self.root / _RESULT

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def confusion(self) -> Path:
        return self.root / "confusion.csv"

    def finished(self) -> bool:
        return self.result.exists()


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run's workdir (or one ablation variant's)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def confusion_csv(self) -> Path:
        return self.root / "confusion.csv"

    @property
    def confusion_png(self) -> Path:
        return self.root / "confusion.png"

    @property
    def tsne_plain(self) -> Path:
        return self.root / "tsne_plain.png"

    @property
    def tsne_enhanced(self) -> Path:
        return self.root / "tsne_enhanced.png"

    @property
    def cache(self) -> Path:
        """The feature cache when the config names none."""
        return self.root / "cache"

    @property
    def corpus(self) -> Path:
        """The synthetic corpus when the config names no data_dir."""
        return self.root / "corpus"

    @property
    def ablation_txt(self) -> Path:
        return self.root / "ablation.txt"

    @property
    def ablation_csv(self) -> Path:
        return self.root / "ablation.csv"

    @property
    def ablation_json(self) -> Path:
        return self.root / "ablation.json"

    def variant(self, name: str) -> RunDir:
        """An ablation variant's run directory."""
        return RunDir(self.root / name)

    def fold(self, index: int) -> FoldRunDir:
        """fold_XX/ (two digits)."""
        return FoldRunDir(self.root / f"{_FOLD}{index:02d}")

    def runs(self, fold: int, seeds: Sequence[int]) -> list[tuple[int, FoldRunDir]]:
        """(seed, directory) of each training of fold `fold`: fold_XX/ with one seed,
        fold_XX/seed_<seed>/ for each of several."""
        base = self.fold(fold).root
        if len(seeds) == 1:
            return [(seeds[0], FoldRunDir(base))]
        return [(seed, FoldRunDir(base / f"seed_{seed}")) for seed in seeds]

    def fold_dirs(self) -> list[Path]:
        """The fold directories there are, in order."""
        return sorted(self.root.glob(f"{_FOLD}*"))

    def result_files(self) -> list[Path]:
        """Every finished training's result.json, in fold and seed order."""
        return sorted([*self.root.glob(FOLD_RESULTS), *self.root.glob(_SEED_RESULTS)])

    def training_started(self) -> Path | None:
        """The first fold directory holding a file a training left (a checkpoint, a
        result), or None; lock files do not count."""
        locks = {lock.LOCK_NAME, lock.GUARD_NAME, lock.USERS_NAME}
        for fold in self.fold_dirs():
            if any(p.name not in locks and not p.is_dir() for p in fold.rglob("*")):
                return fold
        return None


def best_step_dir(checkpoint: Path) -> Path:
    """The best/<epoch> directory meant by `checkpoint`: a fold directory, its best/,
    or best/<epoch> itself.

    Raises:
      CheckpointError: nothing there, or a latest/ directory (a resume point).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise CheckpointError(f"{checkpoint}: does not exist")
    if _LATEST in (checkpoint.name, checkpoint.parent.name):
        fold_dir = checkpoint.parent if checkpoint.name == _LATEST else checkpoint.parent.parent
        raise CheckpointError(
            f"{checkpoint}: {_LATEST}/ is the training state that --resume continues from; "
            f"pass the fold directory ({fold_dir}) or its {_BEST}/ to predict"
        )
    if checkpoint.name.isdigit() and checkpoint.parent.name == _BEST and checkpoint.is_dir():
        return checkpoint
    for directory in (checkpoint, FoldRunDir(checkpoint).best):
        if directory.is_dir():
            steps = [p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]
            if steps:
                return max(steps, key=lambda p: int(p.name))
    raise CheckpointError(
        f"{checkpoint}: no msjax checkpoint found (expected a fold directory with "
        f"{_BEST}/<epoch>/)"
    )
