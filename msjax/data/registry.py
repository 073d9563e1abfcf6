"""The corpora msjax reads, by name: the one list a new corpus is added to.

Each corpus has a loader module (its layout and labels in its docstring) and a config
file configs/<name>.py. Class orders (the class ids):

    iemocap:   anger, happiness (hap + exc), sadness, neutral
    emodb:     anger, boredom, disgust, fear, happiness, sadness, neutral
    emovo:     anger, disgust, fear, happiness, sadness, neutral, surprise
    synthetic: as emodb (an EMODB-layout corpus made by `synthetic.generate_corpus`)
    ravdess:   neutral, calm, happiness, sadness, anger, fear, disgust, surprise
    cremad:    anger, disgust, fear, happiness, sadness, neutral
    manifest:  the data's own labels, sorted, or the config's `labels` (see `manifest`)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from msjax.data import cremad, emodb, emovo, iemocap, manifest, ravdess, synthetic
from msjax.data.records import Dataset


@dataclasses.dataclass(frozen=True)
class Corpus:
    """load(root, allow_count_mismatch=..., **{option: config.<option>}) -> Dataset.

    Attributes:
        load: the loader.
        labels: the fixed class order; None when the data or config give it.
        options: the run config fields passed to the loader by name, besides
            allow_count_mismatch.
    """

    load: Callable[..., Dataset]
    labels: tuple[str, ...] | None
    options: tuple[str, ...] = ()


CORPORA: dict[str, Corpus] = {
    "iemocap": Corpus(iemocap.load, iemocap.LABELS),
    "emodb": Corpus(emodb.load, emodb.LABELS),
    "emovo": Corpus(emovo.load, emovo.LABELS),
    "synthetic": Corpus(synthetic.load, synthetic.LABELS),
    "ravdess": Corpus(ravdess.load, ravdess.LABELS),
    "cremad": Corpus(cremad.load, cremad.LABELS),
    "manifest": Corpus(manifest.load, None, options=("labels", "label_map")),
}
