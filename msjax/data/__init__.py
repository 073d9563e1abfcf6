"""Speech-emotion corpora: loaders, records and cross-validation folds.

`load_dataset(name, root)` returns a `Dataset` whose `labels` are canonical English
names in a fixed order per corpus (the class ids):

    iemocap:   anger, happiness (hap + exc), sadness, neutral
    emodb:     anger, boredom, disgust, fear, happiness, sadness, neutral
    emovo:     anger, disgust, fear, happiness, sadness, neutral, surprise
    synthetic: as emodb (an EMODB-layout corpus made by `synthetic.generate_corpus`)
    ravdess:   neutral, calm, happiness, sadness, anger, fear, disgust, surprise
    cremad:    anger, disgust, fear, happiness, sadness, neutral
    manifest:  the data's own labels, sorted, or the config's `labels` (see `manifest`)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from msjax.data import cremad, emodb, emovo, iemocap, manifest, ravdess, synthetic
from msjax.data.records import Dataset, Utterance, label_index
from msjax.errors import UsageError

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "iemocap": iemocap.load,
    "emodb": emodb.load,
    "emovo": emovo.load,
    "synthetic": synthetic.load,
    "ravdess": ravdess.load,
    "cremad": cremad.load,
    "manifest": manifest.load,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)
# Fixed class orders (a manifest's come from its data or config).
LABELS: dict[str, tuple[str, ...]] = {
    "iemocap": iemocap.LABELS,
    "emodb": emodb.LABELS,
    "emovo": emovo.LABELS,
    "synthetic": synthetic.LABELS,
    "ravdess": ravdess.LABELS,
    "cremad": cremad.LABELS,
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
    if name not in _LOADERS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return _LOADERS[name](Path(root), **kw)


def loader_options(config: Mapping) -> dict:
    """The loader keywords a run config sets: the count check, a manifest's label options."""
    options = {"allow_count_mismatch": config["allow_count_mismatch"]}
    if config["dataset"] == "manifest":
        options.update(labels=config["labels"], label_map=config["label_map"])
    return options


__all__ = [
    "DATASETS", "LABELS", "Dataset", "Utterance", "label_index", "load_dataset", "loader_options",
]
