"""Speech-emotion corpora: loaders, records and cross-validation folds.

`load_dataset(name, root)` returns a `Dataset` whose `labels` are canonical English
names in a fixed order per corpus (the class ids); the corpora are listed in `registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msjax.data.records import Dataset, Utterance, label_index
from msjax.data.registry import CORPORA
from msjax.errors import UsageError

DATASETS: tuple[str, ...] = tuple(CORPORA)
# Fixed class orders (a manifest's come from its data or config).
LABELS: dict[str, tuple[str, ...]] = {
    name: corpus.labels for name, corpus in CORPORA.items() if corpus.labels is not None
}


def load_dataset(name: str, root: Path, **kw) -> Dataset:
    """Loads corpus `name` from `root`.

    Args:
        name: One of `DATASETS`.
        root: The corpus directory (see each loader's module docstring for its layout), or
            the manifest file.
        **kw: Passed to the loader, e.g. `allow_count_mismatch=True`.

    Raises:
        UsageError: unknown name. LayoutError, LabelError, AudioError, DataError: see the
            loaders.
    """
    if name not in CORPORA:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return CORPORA[name].load(Path(root), **kw)


def loader_options(config: Any) -> dict:
    """The loader keywords a run config (typed or a ConfigDict) sets: the count check and
    the corpus' `options` (a manifest's label options)."""
    corpus = CORPORA.get(config.dataset)
    names = ("allow_count_mismatch", *(corpus.options if corpus else ()))
    return {name: getattr(config, name) for name in names}


__all__ = [
    "DATASETS", "LABELS", "Dataset", "Utterance", "label_index", "load_dataset", "loader_options",
]
