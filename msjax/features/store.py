"""Features for training: computed once per utterance into the cache, served as batches.

Per utterance the store holds three entries (each keyed by the audio bytes and
the feature config; SSL entries also by the encoder identity):
  acoustic: mfcc [S, 300, 40], spec [S, 200, 300]
  wav:      wav [S, 48000]   (raw 16 kHz segments, what the SSL encoder eats)
  ssl:      ssl [S, F, D]    (frozen mode: last hidden state per segment)
Batches are fixed-shape stacks of segments read back from the cache, so memory
is bounded by the batch, not by the dataset.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from msjax.data.records import Dataset, Utterance
from msjax.features.acoustic import FeatureConfig, segment
from msjax.features.cache import FeatureCache, audio_hash
from msjax.features.pool import iter_file_features
from msjax.io.rundir import RunDir
from msjax.runtime import interrupts, progress


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the store knows about one utterance without holding its arrays."""

    uid: str
    label: int
    num_segments: int
    audio_hash: str


class FeatureStore:
    """Computes, caches and reads back per-utterance features.

    With the cache disabled (`--no_cache`) the arrays are kept in memory instead,
    which is only sensible for small corpora.
    """

    def __init__(
        self,
        cache: FeatureCache,
        feature_cfg: FeatureConfig,
        encoder=None,
        workers: int | None = None,
    ):
        """Args:
        cache: where entries live.
        feature_cfg: the acoustic feature settings (part of every key).
        encoder: an `msjax.models.encoder.Encoder` for frozen SSL features, or None.
        workers: feature-extraction processes; None for one per core, 1 for none.
        """
        self.cache = cache
        self.cfg = feature_cfg
        self.encoder = encoder
        self.workers = workers
        self._memory: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._entries: dict[str, Entry] = {}
        self._extract_fn: Callable | None = None

    # -- keys ---------------------------------------------------------------
    def _key(self, kind: str, entry_hash: str) -> str:
        parts = [self.cfg.fingerprint()]
        if kind == "ssl":
            parts.append(self.encoder.identity)
        return self.cache.key(entry_hash, kind, *parts)

    def _get(self, kind: str, entry: Entry | str) -> dict[str, np.ndarray] | None:
        digest = entry.audio_hash if isinstance(entry, Entry) else entry
        if not self.cache.enabled:
            return self._memory.get((kind, digest))
        return self.cache.get(kind, self._key(kind, digest))

    def _put(self, kind: str, digest: str, arrays: dict[str, np.ndarray]) -> None:
        if not self.cache.enabled:
            self._memory[(kind, digest)] = arrays
        else:
            self.cache.put(kind, self._key(kind, digest), arrays)

    # -- building -------------------------------------------------------------
    def prepare(self, dataset: Dataset) -> dict[str, Entry]:
        """Makes sure every utterance has its acoustic, wav and (frozen) SSL entries.

        Missing acoustic features are computed by a pool of worker processes
        (`self.workers`); a bad audio file raises AudioError naming it, and what was
        computed before it stays in the cache, so a rerun continues where this one
        stopped. Both stages show a progress bar (msjax.runtime.progress) over the utterances
        they compute.

        Returns:
          uid -> Entry for every utterance of the dataset.
        """
        label_ids = {name: i for i, name in enumerate(dataset.labels)}
        todo: list[tuple[Utterance, str]] = []
        for utt in dataset.utterances:
            digest = audio_hash(utt.path)
            acoustic = self._get("acoustic", digest)
            if acoustic is None or self._get("wav", digest) is None:
                todo.append((utt, digest))
            else:
                self._add(utt, label_ids[utt.label], acoustic, digest)
        computed = iter_file_features([u.path for u, _ in todo], self.cfg, workers=self.workers)
        total = len(dataset.utterances)
        self._kept("features", total - len(todo), total)
        with progress.bar(desc="features", total=len(todo), unit="utt") as shown:
            for done, ((utt, digest), (wav, feats)) in enumerate(zip(todo, computed), 1):
                segments = segment(wav, feats, self.cfg)
                acoustic = {"mfcc": segments.mfcc, "spec": segments.spec}
                self._put("wav", digest, {"wav": segments.wav})
                self._put("acoustic", digest, acoustic)
                self._add(utt, label_ids[utt.label], acoustic, digest)
                self._kept("features", total - len(todo) + done, total)
                shown.update()
        if self.encoder is not None:
            self._prepare_ssl([self._entries[u.uid] for u in dataset.utterances])
        return {u.uid: self._entries[u.uid] for u in dataset.utterances}

    def _kept(self, what: str, cached: int, total: int) -> None:
        """Tells msjax.runtime.interrupts how much of the cache a rerun finds filled."""
        if self.cache.enabled:
            interrupts.kept(f"with the {what} of {cached} of {total} utterances cached "
                            f"in {self.cache.root}")

    def _add(self, utt: Utterance, label: int, acoustic: dict, digest: str) -> None:
        self._entries[utt.uid] = Entry(utt.uid, label, int(acoustic["mfcc"].shape[0]), digest)

    def _prepare_ssl(self, entries: Sequence[Entry]) -> None:
        todo = [e for e in entries if self._get("ssl", e) is None]
        groups = _groups(todo, 4 * self.encoder.extract_batch_size)
        cached = len(entries) - len(todo)
        with progress.bar(desc="SSL features", total=len(todo), unit="utt") as shown:
            for group in groups:
                self._extract_group(group)
                cached += len(group)
                self._kept("SSL features", cached, len(entries))
                shown.update(len(group))

    def _extract_group(self, group: Sequence[Entry]) -> None:
        """Runs the frozen encoder over the segments of a few utterances."""
        wavs = np.concatenate([self._get("wav", e)["wav"] for e in group])
        feats = extract_ssl(self.encoder, wavs)
        start = 0
        for entry in group:
            stop = start + entry.num_segments
            self._put("ssl", entry.audio_hash, {"ssl": feats[start:stop]})
            start = stop

    # -- reading --------------------------------------------------------------
    def load(self, entry: Entry, kinds: Sequence[str]) -> dict[str, np.ndarray]:
        """Reads the arrays of one utterance: all segments of each requested kind."""
        out: dict[str, np.ndarray] = {}
        for kind in kinds:
            arrays = self._get(kind, entry)
            if arrays is None:  # evicted or corrupted since prepare(): rebuild it
                raise LookupError(f"feature cache entry {kind}/{entry.uid} vanished; rerun")
            out.update(arrays)
        return out


def _groups(entries: Sequence[Entry], segments: int) -> Iterator[list[Entry]]:
    """Consecutive runs of `entries` holding at least `segments` segments (the last
    one fewer)."""
    group: list[Entry] = []
    held = 0
    for entry in entries:
        group.append(entry)
        held += entry.num_segments
        if held >= segments:
            yield group
            group, held = [], 0
    if group:
        yield group


def extract_ssl(encoder, wavs: np.ndarray) -> np.ndarray:
    """Frozen SSL features for waveform segments, in fixed-size jitted batches.

    Args:
      encoder: an `msjax.models.encoder.Encoder` (its `features` and `extract_batch_size`).
      wavs: [S, N] raw 16 kHz segments.

    Returns:
      [S, F, D] float32 last hidden states.
    """
    batch = encoder.extract_batch_size
    outputs = []
    for start in range(0, len(wavs), batch):
        chunk = wavs[start : start + batch]
        padded = np.zeros((batch,) + wavs.shape[1:], np.float32)
        padded[: len(chunk)] = chunk
        outputs.append(np.asarray(encoder.features(padded))[: len(chunk)])
    return np.concatenate(outputs)


def segment_refs(entries: Sequence[Entry]) -> list[tuple[Entry, int]]:
    """Every (utterance, segment index) pair of `entries`, in order."""
    return [(e, s) for e in entries for s in range(e.num_segments)]


def iterate_batches(
    store: FeatureStore,
    entries: Sequence[Entry],
    batch_size: int,
    kinds: Sequence[str],
    *,
    rng: np.random.Generator | None = None,
    rows: slice | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], list[str]]]:
    """Yields fixed-shape batches of segments and the uid of each row.

    The last batch is zero-padded to `batch_size` with `mask` 0 on the padding,
    so every step sees one shape and jit traces once. Given `rows` (this process's
    share of a multi-process batch, `msjax.runtime.distributed.Coordinator.local_rows`),
    only those rows of each batch are read.

    Args:
      store: the feature store.
      entries: the utterances of one split.
      batch_size: rows per batch.
      kinds: which entries to read ("acoustic", "ssl", "wav").
      rng: shuffles the segments when given (training).
      rows: the rows of every batch to read (all by default).

    Yields:
      (batch, uids): batch has every array of `kinds` stacked to [R, ...] (R rows:
      batch_size, or those of `rows`) plus `label` int32 [R] and `mask` float32 [R];
      uids lists the valid rows of the whole batch.
    """
    rows = slice(0, batch_size) if rows is None else rows
    size = len(range(batch_size)[rows])
    refs = segment_refs(entries)
    if rng is not None:
        refs = [refs[i] for i in rng.permutation(len(refs))]
    for start in range(0, len(refs), batch_size):
        chunk = refs[start : start + batch_size]
        mine = chunk[rows]
        loaded: dict[str, dict[str, np.ndarray]] = {}
        columns: dict[str, list[np.ndarray]] = {}
        for entry, s in mine:
            if entry.uid not in loaded:
                loaded[entry.uid] = store.load(entry, kinds)
            for name, array in loaded[entry.uid].items():
                columns.setdefault(name, []).append(array[s])
        if mine:
            batch = {name: _pad(np.stack(arrays), size) for name, arrays in columns.items()}
        else:  # this process's rows are all padding: shapes from the batch's first row
            first = store.load(chunk[0][0], kinds)
            batch = {name: np.zeros((size, *a.shape[1:]), a.dtype) for name, a in first.items()}
        batch["label"] = _pad(np.array([e.label for e, _ in mine], np.int32), size)
        batch["mask"] = _pad(np.ones(len(mine), np.float32), size)
        yield batch, [e.uid for e, _ in chunk]


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if len(array) == size:
        return array
    padding = np.zeros((size - len(array),) + array.shape[1:], array.dtype)
    return np.concatenate([array, padding])


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Runs `iterator` in a background thread, `size` items ahead.

    Reading and stacking the next batch overlaps the current jitted step.
    Exceptions raised by the producer are re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                q.put(item)
        except BaseException as err:  # handed to the consumer
            q.put(err)
        q.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def device_batch(
    batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding, size: int
) -> dict[str, jax.Array]:
    """One global batch of `size` rows, split along the batch axis over `sharding`'s
    devices, from this process's rows of it (`iterate_batches(..., rows=...)`: the
    whole batch with one process)."""
    return {
        name: jax.make_array_from_process_local_data(sharding, array, (size, *array.shape[1:]))
        for name, array in batch.items()
    }


def cache_root(config_cache_dir: str, workdir: Path) -> Path:
    """The cache directory a run uses: the configured one, else <workdir>/cache."""
    return Path(config_cache_dir) if config_cache_dir else RunDir(Path(workdir)).cache
