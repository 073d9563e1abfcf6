"""Predicting emotions of audio files with a trained fold checkpoint.

The checkpoint carries what it needs: labels, feature config, image size,
model config, spectrogram statistics and the SSL encoder's identity (or, when
the encoder was fine-tuned, its weights). A frozen-feature checkpoint reloads
its encoder by name and refuses one whose weights differ.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np

from msjax.audio import load_audio
from msjax.convert.hf import normalize_waveform
from msjax.encoders import Encoder, load_encoder
from msjax.errors import AudioError, CheckpointError, DataError
from msjax.features import FeatureConfig, segment, utterance_features
from msjax.models.ssl import SSLConfig, SSLEncoder
from msjax.train import checkpoint, setup
from msjax.train.steps import model_inputs

AUDIO_SUFFIXES = (".wav", ".flac")


class Predictor:
    """A checkpoint loaded for inference: `predict_file(path) -> log-probs [C]`."""

    def __init__(self, checkpoint_dir: str | Path):
        best_dir, meta = checkpoint.load_metadata(Path(checkpoint_dir))
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.feature_cfg = FeatureConfig(**meta["features"])
        variables = checkpoint.restore_best(best_dir, None)
        self.encoder = self._encoder(meta["ssl"], variables["params"])
        model = setup.build_model(
            meta["model"], len(self.labels), self.feature_cfg, self.encoder,
            meta["ssl"]["finetune"],
        )
        self.variables = jax.tree.map(jnp.asarray, variables)
        image_size = tuple(meta["image_size"])
        normalize = normalize_waveform if meta["ssl"]["finetune"] and self.encoder.normalize \
            else None

        def logprobs(variables, batch):
            inputs = model_inputs(batch, variables["norm"], image_size, normalize)
            logits = model.apply({"params": variables["params"]}, inputs, train=False)
            return jax.nn.log_softmax(logits)

        self._logprobs = jax.jit(logprobs)

    @staticmethod
    def _encoder(ssl: dict, params: dict) -> Encoder:
        if ssl["finetune"]:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in ssl["config"].items()}
            config = SSLConfig(**fields)
            return Encoder(
                ssl["name"], SSLEncoder(config), params["encoder"], config, ssl["normalize"],
                ssl["identity"],
            )
        encoder = load_encoder(ssl["name"], seed=ssl["seed"])
        if encoder.identity != ssl["identity"]:
            raise CheckpointError(
                f"SSL encoder {ssl['name']}: its weights differ from those the checkpoint "
                "was trained on (identity mismatch); load the same checkpoint"
            )
        return encoder

    def predict_file(self, path: Path) -> np.ndarray:
        """Mean segment log-probabilities of one file. Returns [C]."""
        wav = load_audio(path, self.feature_cfg.sample_rate)
        segs = segment(wav, utterance_features(wav, self.feature_cfg), self.feature_cfg)
        batch = {"mfcc": segs.mfcc, "spec": segs.spec}
        if self.meta["ssl"]["finetune"]:
            batch["wav"] = segs.wav
        else:
            batch["ssl"] = np.asarray(self.encoder.features(segs.wav))
        return np.asarray(self._logprobs(self.variables, batch)).mean(0)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (searched recursively for .wav/.flac) and .txt/.lst lists of paths."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES))
        elif item.suffix.lower() in (".txt", ".lst"):
            if not item.is_file():
                raise DataError(f"{item}: list file does not exist")
            lines = [line.strip() for line in item.read_text().splitlines()]
            paths.extend(Path(line) for line in lines if line and not line.startswith("#"))
        else:
            paths.append(item)
    return paths


def predict(predictor: Predictor, paths: Sequence[Path]) -> Iterator[dict]:
    """One record per file: label and per-class probabilities, or the error.

    A bad file gives status "error" with its one-line message; the others go on.
    """
    for path in paths:
        try:
            logprobs = predictor.predict_file(path)
        except AudioError as err:
            yield {"path": str(path), "status": "error", "error": str(err)}
            continue
        probs = np.exp(logprobs - np.logaddexp.reduce(logprobs))
        yield {
            "path": str(path),
            "status": "ok",
            "label": predictor.labels[int(np.argmax(probs))],
            "probabilities": {name: float(p) for name, p in zip(predictor.labels, probs)},
        }


def write_records(records: Sequence[dict], labels: Sequence[str], out: Path | None) -> None:
    """Writes JSONL (.jsonl/.json), else CSV; to stdout when `out` is None."""
    if out is None:
        _write_csv(records, labels, sys.stdout)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".jsonl", ".json"):
        out.write_text("".join(json.dumps(r) + "\n" for r in records))
        return
    with open(out, "w", newline="") as f:
        _write_csv(records, labels, f)


def _write_csv(records: Sequence[dict], labels: Sequence[str], f: TextIO) -> None:
    writer = csv.writer(f)
    writer.writerow(["path", "status", "label", *[f"p_{n}" for n in labels], "error"])
    for r in records:
        probs = r.get("probabilities", {})
        writer.writerow([
            r["path"], r["status"], r.get("label", ""),
            *[f"{probs[n]:.6f}" if n in probs else "" for n in labels], r.get("error", ""),
        ])

__all__ = ["Predictor", "expand_inputs", "predict", "write_records"]
