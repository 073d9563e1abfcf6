"""Training one fold: epochs, validation, early stopping, checkpoints, resume.

A fold directory holds latest/ (resume point, rewritten every epoch), best/
(what predict needs) and, once the fold is finished, result.json: its presence
marks the fold done, so a rerun of the same workdir skips it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from msjax import inference, runtime
from msjax.errors import DataError
from msjax.features.store import Entry, FeatureStore, device_batch, iterate_batches, prefetch
from msjax.io import checkpoint
from msjax.results import metrics as M
from msjax.runtime import distributed, interrupts, progress, timing
from msjax.runtime.distributed import Coordinator

log = logging.getLogger(__name__)


class NonFiniteLossError(DataError):
    """Training produced a NaN or Inf loss, parameters or validation output."""


@dataclasses.dataclass
class FoldRunner:
    """Everything one fold's training needs besides its data splits.

    Attributes:
      store: the feature store the batches are read from.
      kinds: the store entries a batch needs ("acoustic" plus "ssl" or "wav").
      train_step / eval_step: from `msjax.train.steps.make_steps`.
      batch_size / eval_batch_size: rows per batch (multiples of the device count).
      num_epochs / patience: the schedule; patience counts epochs without a
        better validation WA+UA.
      seed: shuffling and dropout keys derive from (seed, fold, epoch/step).
      data_sharding: where batches go.
      num_classes: C.
      coordinator: the processes of the run (default: this program's,
        msjax.runtime.distributed.current).
    """

    store: FeatureStore
    kinds: Sequence[str]
    train_step: Callable
    eval_step: Callable
    batch_size: int
    eval_batch_size: int
    num_epochs: int
    patience: int
    seed: int
    data_sharding: Any
    num_classes: int
    coordinator: Coordinator = dataclasses.field(default_factory=distributed.current)
    _compiled: bool = dataclasses.field(default=False, init=False, repr=False)

    def evaluate(self, state: dict, entries: Sequence[Entry]) -> dict:
        """Utterance-level evaluation: segment log-softmax averaged per utterance.

        Returns:
          dict with uids [U], labels [U], logprobs [U, C], cm [C, C], wa, ua, f1.
        """
        rows, uids = [], []
        size = self.eval_batch_size
        batches = iterate_batches(
            self.store, entries, size, self.kinds,
            rows=self.coordinator.local_rows(self.data_sharding, size),
        )
        for batch, batch_uids in prefetch(batches):
            # Replicated output: every process gets the whole batch's rows.
            logprobs = self.eval_step(state, device_batch(batch, self.data_sharding, size))
            rows.append(np.asarray(logprobs)[: len(batch_uids)])
            uids.extend(batch_uids)
        utt_ids, logprobs = inference.utterance_predictions(np.concatenate(rows), uids)
        label_of = {e.uid: e.label for e in entries}
        labels = np.array([label_of[u] for u in utt_ids])
        cm = M.confusion_matrix(labels, logprobs.argmax(-1), self.num_classes)
        return {
            "uids": [str(u) for u in utt_ids],
            "labels": labels,
            "logprobs": logprobs,
            "cm": cm,
            "wa": M.weighted_accuracy(cm),
            "ua": M.unweighted_accuracy(cm),
            "f1": M.macro_f1(cm),
        }

    def train_epoch(self, state: dict, entries: Sequence[Entry], fold: int, epoch: int):
        """One pass over the training segments; returns (state, loss, accuracy).

        Metrics stay on the device until the epoch ends (no per-step host sync);
        a non-finite loss is then traced back to its step and utterances.
        """
        rng = np.random.default_rng([self.seed, fold, epoch])
        loop_key = jax.random.fold_in(jax.random.key(self.seed), fold)
        batches = iterate_batches(
            self.store, entries, self.batch_size, self.kinds, rng=rng,
            rows=self.coordinator.local_rows(self.data_sharding, self.batch_size),
        )
        step_metrics, step_uids = [], []
        num_batches = -(-sum(e.num_segments for e in entries) // self.batch_size)
        bar = progress.bar(
            prefetch(batches), total=num_batches, unit="batch",
            desc=f"fold {fold} epoch {epoch}/{self.num_epochs}",
        )
        for batch, uids in bar:
            state, step = self.train_step(
                state, device_batch(batch, self.data_sharding, self.batch_size), loop_key
            )
            if not self._compiled:
                # The first call compiled the step: hand what the compiler freed back
                # before the steps' own buffers take their place.
                runtime.release_free_memory()
                self._compiled = True
            step_metrics.append(step)
            step_uids.append(uids)
        host = jax.device_get(step_metrics)
        first_step = int(jax.device_get(state["step"])) - len(host)
        for i, m in enumerate(host):
            if not np.isfinite(m["loss_sum"]):
                shown = ", ".join(step_uids[i][:8]) + (" ..." if len(step_uids[i]) > 8 else "")
                raise NonFiniteLossError(
                    f"fold {fold} epoch {epoch} step {first_step + i}: non-finite loss "
                    f"({m['loss_sum']}); batch utterances: {shown}"
                )
        count = max(sum(float(m["count"]) for m in host), 1.0)
        loss = sum(float(m["loss_sum"]) for m in host) / count
        accuracy = sum(float(m["correct"]) for m in host) / count
        return state, loss, accuracy

    def _save_epoch(self, fold_dir: Path, fold: int, epoch: int, state: dict, loop: dict,
                    val: dict, score: float, metadata: dict) -> None:
        """Updates `loop` for `epoch` and saves it: best/ when the score improved, then
        latest/ (the resume point)."""
        if score > loop["best_score"]:
            loop.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            variables = {"params": state["params"], "norm": state["norm"]}
            meta = dict(metadata, epoch=epoch, val_wa=val["wa"], val_ua=val["ua"])
            with timing.section("checkpoint"):
                checkpoint.save_best(fold_dir, epoch, variables, meta, self.coordinator)
        else:
            loop["bad_epochs"] += 1
        loop["epoch"] = epoch
        with timing.section("checkpoint"):
            checkpoint.save_latest(fold_dir, epoch, state, loop, self.coordinator)
        interrupts.kept(f"after fold {fold} epoch {epoch} ({fold_dir})")

    def run(
        self,
        fold_dir: Path,
        fold: int,
        state: dict,
        splits: dict[str, Sequence[Entry]],
        metadata: dict,
    ) -> dict:
        """Trains until the schedule or early stopping ends, resuming if possible.

        `metadata` is saved beside the best parameters (what predict needs).

        Returns:
          the restored best variables' test evaluation plus the loop record.
        """
        loop = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
        restored = checkpoint.restore_latest(fold_dir, checkpoint.abstract_like(state))
        if restored is not None:
            state, loop = restored
            interrupts.kept(f"after fold {fold} epoch {loop['epoch']} ({fold_dir})")
            log.info("fold %d: resuming after epoch %d", fold, loop["epoch"])
        while loop["epoch"] < self.num_epochs and loop["bad_epochs"] < self.patience:
            epoch = loop["epoch"] + 1
            start = time.perf_counter()
            state, loss, accuracy = self.train_epoch(state, splits["train"], fold, epoch)
            # A non-finite gradient on an epoch's last step leaves a finite loss behind.
            if not checkpoint.all_finite(state["params"]):
                raise NonFiniteLossError(
                    f"fold {fold} epoch {epoch} step {int(jax.device_get(state['step']))}: "
                    "non-finite parameters after the update (non-finite gradient); "
                    "lower --config.optim.learning_rate or check the inputs"
                )
            val = self.evaluate(state, splits["val"])
            if not np.isfinite(val["logprobs"]).all():
                raise NonFiniteLossError(
                    f"fold {fold} epoch {epoch}: non-finite validation output"
                )
            score = val["wa"] + val["ua"]
            loop["history"].append(
                {"epoch": epoch, "loss": loss, "train_acc": accuracy, "val_wa": val["wa"],
                 "val_ua": val["ua"]}
            )
            # A signal arriving while the epoch is saved ends the run once it is saved.
            with interrupts.deferred():
                self._save_epoch(fold_dir, fold, epoch, state, loop, val, score, metadata)
            progress.line(
                "fold %d epoch %d: loss %.4f acc %.3f val WA %.4f UA %.4f (%.1f s)%s", fold,
                epoch, loss, accuracy, val["wa"], val["ua"], time.perf_counter() - start,
                " *" if loop["best_epoch"] == epoch else "",
            )
        best_dir, _ = checkpoint.load_metadata(fold_dir)
        variables = checkpoint.restore_best(
            best_dir, checkpoint.abstract_like({"params": state["params"], "norm": state["norm"]})
        )
        best_state = dict(state, **variables)
        test = self.evaluate(best_state, splits["test"])
        return {"loop": loop, "test": test, "state": best_state}
