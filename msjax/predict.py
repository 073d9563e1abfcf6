"""Predicting emotions of audio files with a trained fold checkpoint.

The checkpoint carries what it needs: labels, feature config, image size,
model config, spectrogram statistics and the SSL encoder's identity (or, when
the encoder was fine-tuned, its weights). A frozen-feature checkpoint reloads
its encoder by name and refuses one whose weights differ.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np

from msjax import checkpoint, inference
from msjax.audio import load_audio, wav_header_problem
from msjax.encoders import Encoder, load_encoder
from msjax.errors import AudioError, CheckpointError, DataError, UsageError, writing
from msjax.features import FeatureConfig, segment, utterance_features
from msjax.models.ssl import SSLConfig, SSLEncoder

# Suffixes of audio files a folder is searched for; libsndfile decodes the first
# ones, the others get an error row.
AUDIO_SUFFIXES = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
    ".m4a", ".aac", ".wma", ".webm", ".amr",
)


class Predictor:
    """A checkpoint loaded for inference: `predict_file(path) -> log-probs [C]`."""

    def __init__(self, checkpoint_dir: str | Path, allow_unverified: bool = False):
        best_dir, meta = checkpoint.load_metadata(Path(checkpoint_dir), allow_unverified)
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        self.feature_cfg = FeatureConfig(**meta["features"])
        variables = checkpoint.restore_best(best_dir, None)
        self.encoder = self._encoder(meta["ssl"], variables["params"])
        finetune = meta["ssl"]["finetune"]
        model = inference.build_model(
            meta["model"], len(self.labels), self.feature_cfg, self.encoder, finetune
        )
        self.variables = jax.tree.map(jnp.asarray, variables)
        image_size = tuple(meta["image_size"])
        normalize_wav = inference.wav_normalizer(self.encoder, finetune)

        def log_probs(variables, batch):
            return inference.log_probs(
                model, variables["params"], batch, variables["norm"], image_size=image_size,
                normalize_wav=normalize_wav,
            )

        self._log_probs = jax.jit(log_probs)

    @staticmethod
    def _encoder(ssl: dict, params: dict) -> Encoder:
        if ssl["finetune"]:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in ssl["config"].items()}
            config = SSLConfig(**fields)
            return Encoder(
                ssl["name"], SSLEncoder(config), params["encoder"], config,
                normalize=ssl["normalize"], identity=ssl["identity"],
            )
        encoder = load_encoder(ssl["name"], seed=ssl["seed"])
        if encoder.identity != ssl["identity"]:
            raise CheckpointError(
                f"SSL encoder {ssl['name']}: its weights differ from those the checkpoint "
                "was trained on (identity mismatch); load the same checkpoint"
            )
        return encoder

    def predict_file(self, path: Path) -> np.ndarray:
        """Mean segment log-probabilities of one file, as training's evaluation pools
        them. Returns [C]."""
        wav = load_audio(path, self.feature_cfg.sample_rate)
        segs = segment(wav, utterance_features(wav, self.feature_cfg), self.feature_cfg)
        batch = {"mfcc": segs.mfcc, "spec": segs.spec}
        if self.meta["ssl"]["finetune"]:
            batch["wav"] = segs.wav
        else:
            batch["ssl"] = np.asarray(self.encoder.features(segs.wav))
        segment_logprobs = np.asarray(self._log_probs(self.variables, batch))
        _, mean = inference.utterance_predictions(segment_logprobs, [0] * len(segment_logprobs))
        return mean[0]


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (every audio file below them, by suffix) and .txt/.lst lists of paths.

    Folders yield every file with an audio suffix, decodable or not, so that each
    gets its row.
    """
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

    A bad file gives status "error" with its one-line message and the others go
    on; a truncated WAV is predicted from what it holds, with status "warning".
    """
    for path in paths:
        try:
            logprobs = predictor.predict_file(path)
            problem = wav_header_problem(path)
        except AudioError as err:
            yield {"path": str(path), "status": "error", "error": str(err)}
            continue
        if not np.isfinite(logprobs).all():
            yield {"path": str(path), "status": "error", "error": f"{path}: non-finite output"}
            continue
        probs = inference.probabilities(logprobs)
        record = {
            "path": str(path),
            "status": "warning" if problem else "ok",
            "label": predictor.labels[int(np.argmax(probs))],
            "probabilities": {name: float(p) for name, p in zip(predictor.labels, probs)},
        }
        if problem:
            record["error"] = f"{path}: {problem}"
        yield record


def check_output(out: Path | None) -> None:
    """Fails before any work when `out` cannot be written (a directory, no permission,
    a read-only or full disk): creates its folder and a scratch file beside it.

    Raises:
      UsageError: `out` is a directory. WriteError: it cannot be written.
    """
    if out is None:
        return
    if out.is_dir():
        raise UsageError(f"--output={out}: is a directory; give a .csv or .jsonl file")
    with writing(out, "predictions"):
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent) as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())


class RecordWriter:
    """Writes records as they come: JSONL (.jsonl/.json), else CSV; stdout when `out`
    is None. Each row is flushed, so a failure later keeps the rows before it."""

    def __init__(self, out: Path | None, labels: Sequence[str]):
        self.out, self.labels = out, list(labels)
        self.jsonl = out is not None and out.suffix.lower() in (".jsonl", ".json")
        with writing(out or "stdout", "predictions"):
            self.file: TextIO = sys.stdout if out is None else open(out, "w", newline="")
            if not self.jsonl:
                self._csv = csv.writer(self.file)
                self._csv.writerow(
                    ["path", "status", "label", *[f"p_{n}" for n in labels], "error"]
                )
                self.file.flush()

    def write(self, r: dict) -> None:
        with writing(self.out or "stdout", "predictions"):
            if self.jsonl:
                self.file.write(json.dumps(r) + "\n")
            else:
                probs = r.get("probabilities", {})
                self._csv.writerow([
                    r["path"], r["status"], r.get("label", ""),
                    *[f"{probs[n]:.6f}" if n in probs else "" for n in self.labels],
                    r.get("error", ""),
                ])
            self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            with writing(self.out, "predictions"):
                self.file.close()


__all__ = ["Predictor", "RecordWriter", "check_output", "expand_inputs", "predict"]
