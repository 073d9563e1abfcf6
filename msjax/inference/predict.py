"""Predicting emotions of audio files with a trained fold checkpoint.

The checkpoint carries what it needs: labels, feature config, image size,
model config, spectrogram statistics and the SSL encoder's identity (or, when
the encoder was fine-tuned, its weights). A frozen-feature checkpoint reloads
its encoder by name and refuses one whose weights differ.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np

from msjax import inference, runtime
from msjax.convert.encoders import load_encoder
from msjax.errors import AudioError, CheckpointError, DataError, UsageError, writing
from msjax.features.acoustic import FeatureConfig, Segments
from msjax.features.audio import wav_header_problem
from msjax.features.streaming import file_segments
from msjax.io import checkpoint
from msjax.models.encoder import Encoder
from msjax.models.products import COMPUTE_DTYPES
from msjax.models.ssl import SSLConfig, SSLEncoder
from msjax.runtime import interrupts

# Suffixes of audio files a folder is searched for; libsndfile decodes the first
# ones, the others get an error row.
AUDIO_SUFFIXES = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
    ".m4a", ".aac", ".wma", ".webm", ".amr",
)
# Segments per jitted batch (the frozen-feature extraction's batch).
DEFAULT_BATCH_SIZE = 8
# Audio read at once from a long recording; bounds memory whatever the file's length.
DEFAULT_WINDOW_SECONDS = 60.0
# Batches the feature thread prepares ahead of the model.
_BATCHES_AHEAD = 2
# Inputs whose prediction is given with status "warning" (`input_warnings`): audio
# shorter than this fraction of a segment (the model then sees mostly zero padding)...
SHORT_FRACTION = 0.25
# ...and audio whose RMS level lies below this, in dB relative to full scale (a
# full-scale square wave is 0 dBFS; a microphone's noise floor in a quiet room lies
# around -60, speech around -30 to -20).
SILENCE_DBFS = -60.0


class Predictor:
    """A checkpoint loaded for inference: `segment_log_probs(batch) -> [B, C]` on fixed-size
    batches of segments, and `segments(path)`, a file's segments window by window.

    `compute_dtype="bfloat16"` runs the encoder and the head in bfloat16 (float32
    accumulation) from weights cast once at load. It is meant for GPUs and CPUs with
    bfloat16 matrix units (e.g. Intel AMX), where it is faster; probabilities then
    differ from float32's by up to a few thousandths.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        allow_unverified: bool = False,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        compute_dtype: str = "float32",
    ):
        if compute_dtype not in COMPUTE_DTYPES:
            raise UsageError(
                f"--compute_dtype={compute_dtype}: must be one of "
                + ", ".join(COMPUTE_DTYPES)
            )
        if batch_size < 1:
            raise UsageError(f"--batch_size={batch_size}: must be at least 1")
        if not window_seconds > 0:
            raise UsageError(f"--window_seconds={window_seconds}: must be positive")
        best_dir, meta = checkpoint.load_metadata(Path(checkpoint_dir), allow_unverified)
        self.meta = meta
        self.labels: list[str] = meta["labels"]
        try:
            self.feature_cfg = FeatureConfig(**meta["features"])
        except (TypeError, UsageError) as err:  # a field it lacks, or a bad value
            raise CheckpointError(
                f"{best_dir}: its feature config is not msjax's ({err})"
            ) from None
        self.batch_size = batch_size
        # Whole segments per window, so that no segment straddles two windows.
        segments = max(1, round(window_seconds / self.feature_cfg.segment_seconds))
        self.window = segments * self.feature_cfg.segment_samples
        variables = checkpoint.restore_best(best_dir, None)
        finetune = meta["ssl"]["finetune"]
        dtype = COMPUTE_DTYPES[compute_dtype]
        try:
            loaded = self._encoder(meta["ssl"], variables["params"])
            network = inference.build_model(
                meta["model"], len(self.labels), self.feature_cfg, loaded, finetune
            )
        except (KeyError, TypeError, ValueError) as err:  # a field it lacks, or a bad value
            raise CheckpointError(
                f"{best_dir}: its model or encoder config is not msjax's "
                f"({type(err).__name__}: {err})"
            ) from None
        model = inference.with_compute_dtype(network, dtype)
        # Weights cast to the compute dtype here, once, rather than in every batch;
        # the spectrogram statistics ("norm") stay float32.
        self.variables = jax.tree.map(jnp.asarray, variables)
        self.variables["params"] = inference.cast_floats(self.variables["params"], dtype)
        # A frozen encoder runs in the same program as the head: its weights are an
        # argument (not constants baked into the program).
        self._encoder_params = None if finetune else inference.cast_floats(
            jax.tree.map(jnp.asarray, loaded.params), dtype
        )
        image_size = tuple(meta["image_size"])
        normalize_wav = inference.wav_normalizer(loaded, finetune)
        # The encoder as the program runs it: its module computing in the compute dtype,
        # holding only the weights it computes with (none when it runs inside the model),
        # so that a bfloat16 predictor does not keep the float32 copy too.
        encoder = dataclasses.replace(
            loaded, module=loaded.module.clone(dtype=dtype), params=self._encoder_params
        )

        def log_probs(variables, encoder_params, batch):
            if encoder_params is not None:
                batch = {**batch, "ssl": encoder.last_hidden_state(encoder_params, batch["wav"])}
                del batch["wav"]
            return inference.log_probs(
                model, variables["params"], batch, variables["norm"], image_size=image_size,
                normalize_wav=normalize_wav, compute_dtype=dtype,
            )

        self._log_probs = jax.jit(log_probs)
        self._compiled = False

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

    def segments(self, path: Path) -> Iterator[tuple[Segments, int]]:
        """(segments, samples) of each window of a file (`streaming.file_segments`)."""
        return file_segments(path, self.feature_cfg, self.window)

    def segment_log_probs(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Log-probabilities of a batch of segments: mfcc [B, T, M], spec [B, F, T],
        wav [B, N] -> [B, C]. Compiled once per batch shape."""
        logprobs = np.asarray(self._log_probs(self.variables, self._encoder_params, batch))
        if not self._compiled:
            # The first call compiled the program: hand what the compiler freed back.
            runtime.release_free_memory()
            self._compiled = True
        return logprobs


@dataclasses.dataclass
class FileResult:
    """One file's outcome: its output row, its length, and when it was predicted the
    log-probabilities of its segments [S, C] (segment k covers k * segment_seconds on)."""

    path: Path
    record: dict
    seconds: float = 0.0
    segment_logprobs: np.ndarray | None = None


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
    """One record per file, in order: label and per-class probabilities, or the error.

    A bad file gives status "error" with its one-line message and the others go
    on; a truncated WAV is predicted from what it holds, and so are a clip much
    shorter than a segment and near-silent audio (`input_warnings`), each with
    status "warning" and the reason in "error".
    """
    return (result.record for result in predict_files(predictor, paths))


# on_segments(input index, path, first segment k, log-probabilities [K, C]).
SegmentsDone = Callable[[int, Path, int, np.ndarray], None]


def predict_files(
    predictor: Predictor, paths: Sequence[Path], on_segments: SegmentsDone | None = None
) -> Iterator[FileResult]:
    """`predict` with each file's segment log-probabilities and length, as files finish.

    Segments of consecutive files are packed into batches of `predictor.batch_size`
    (the last one padded), so the model compiles once whatever the files' lengths. A
    thread decodes files and computes features for the next batches while the model
    runs on the current one. Close the iterator when stopping early (the thread ends).

    `on_segments`, when given, hears of segments before their file is done (a long
    recording's, window by window), in order, files one after the other: each segment
    but the last one of a file, whose end is the file's and known only at its end.
    """
    jobs: queue.Queue = queue.Queue(maxsize=_BATCHES_AHEAD)
    stop = threading.Event()
    packer = threading.Thread(
        target=_pack, args=(predictor, paths, jobs, stop), daemon=True, name="predict-features"
    )
    packer.start()
    files: dict[int, _InFlight] = collections.defaultdict(_InFlight)
    done = 0
    try:
        while done < len(paths):
            kind, *item = jobs.get()
            if kind == "batch":
                batch, owners = item
                logprobs = predictor.segment_log_probs(batch)
                for owner, row in zip(owners, logprobs):
                    files[owner].logprobs.append(row)
            elif kind == "file":
                index, count, samples, problems = item
                files[index].count, files[index].samples = count, samples
                files[index].problems = problems
            elif kind == "error":
                index, error = item
                files[index].error = error
            else:  # "raise": anything but a bad file ends the run
                raise item[0]
            while done < len(paths) and files[done].complete:
                yield _result(predictor, paths[done], files.pop(done))
                done += 1
            if on_segments is not None and done < len(paths):
                _report_segments(files[done], done, paths[done], on_segments)
    finally:
        stop.set()
        packer.join()


@dataclasses.dataclass
class _InFlight:
    logprobs: list[np.ndarray] = dataclasses.field(default_factory=list)
    count: int | None = None  # segments, once the file is read to its end
    samples: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    error: AudioError | None = None
    reported: int = 0  # segments handed to on_segments

    @property
    def complete(self) -> bool:
        return self.error is not None or self.count == len(self.logprobs)


def _report_segments(file: _InFlight, index: int, path: Path, on_segments: SegmentsDone) -> None:
    """Hands the segments of the file being finished that are settled to `on_segments`:
    all that came back but the latest, which may be the file's last."""
    settled = len(file.logprobs) - 1
    if file.error is None and settled > file.reported:
        on_segments(index, path, file.reported, np.stack(file.logprobs[file.reported:settled]))
        file.reported = settled


def input_warnings(samples: int, energy: float, cfg: FeatureConfig) -> list[str]:
    """Why a prediction of this audio is not to be trusted, if it is not: shorter than
    SHORT_FRACTION of a segment, or RMS below SILENCE_DBFS.

    Args:
      samples: the file's length at `cfg.sample_rate`.
      energy: the sum of its squared samples.
    """
    found = []
    seconds = samples / cfg.sample_rate
    if samples < SHORT_FRACTION * cfg.segment_samples:
        found.append(
            f"only {seconds:.3g} s of audio, under {SHORT_FRACTION * cfg.segment_seconds:g} s "
            f"({SHORT_FRACTION:g} of the model's {cfg.segment_seconds:g} s segment): the "
            "prediction rests mostly on padding"
        )
    if energy == 0.0:
        found.append("digital silence (every sample is zero): the prediction is not of speech")
    else:
        dbfs = 10 * np.log10(energy / samples)
        if dbfs < SILENCE_DBFS:
            found.append(
                f"near-silent (RMS {dbfs:.0f} dBFS, under {SILENCE_DBFS:g} dBFS): the "
                "prediction is not of speech"
            )
    return found


def _result(predictor: Predictor, path: Path, file: _InFlight) -> FileResult:
    if file.error is not None:
        return FileResult(path, {"path": str(path), "status": "error", "error": str(file.error)})
    seconds = file.samples / predictor.feature_cfg.sample_rate
    segment_logprobs = np.stack(file.logprobs)
    _, mean = inference.utterance_predictions(segment_logprobs, [0] * len(segment_logprobs))
    if not np.isfinite(mean).all():
        record = {"path": str(path), "status": "error", "error": f"{path}: non-finite output"}
        return FileResult(path, record, seconds)
    probs = inference.probabilities(mean[0])
    record = {
        "path": str(path),
        "status": "warning" if file.problems else "ok",
        "label": predictor.labels[int(np.argmax(probs))],
        "probabilities": {name: float(p) for name, p in zip(predictor.labels, probs)},
    }
    if file.problems:
        record["error"] = f"{path}: " + "; ".join(file.problems)
    return FileResult(path, record, seconds, segment_logprobs)


class _Stopped(Exception):
    """The consumer went away; the packing thread ends."""


def _pack(predictor: Predictor, paths: Sequence[Path], jobs: queue.Queue,
          stop: threading.Event) -> None:
    """Runs in a thread: files -> ("batch", arrays, owners), ("file", index, segments,
    samples, problems: the header's and `input_warnings`) or ("error", index,
    AudioError) in order, then "raise" with any other exception once the segments
    before it are sent."""

    def send(*item) -> None:
        while not stop.is_set():
            try:
                jobs.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    rows: list[tuple[int, Segments, int]] = []  # (file, window's segments, row)

    def send_rows() -> None:
        batch = _stack(rows, predictor.batch_size)
        owners = [owner for owner, _, _ in rows]
        rows.clear()
        send("batch", batch, owners)

    try:
        for index, path in enumerate(paths):
            try:
                count = samples = 0
                energy = 0.0
                for segs, n in predictor.segments(path):
                    samples += n
                    # Segments do not overlap and are padded with zeros.
                    energy += float(np.square(segs.wav, dtype=np.float64).sum())
                    for row in range(len(segs)):
                        rows.append((index, segs, row))
                        count += 1
                        if len(rows) == predictor.batch_size:
                            send_rows()
                header = wav_header_problem(path)
            except AudioError as error:
                rows[:] = [r for r in rows if r[0] != index]
                send("error", index, error)
                continue
            problems = [header] if header else []
            problems += input_warnings(samples, energy, predictor.feature_cfg)
            send("file", index, count, samples, problems)
        if rows:
            send_rows()
    except _Stopped:
        return
    except BaseException as error:  # handed to the consumer, after the work before it
        try:
            if rows:
                send_rows()
            send("raise", error)
        except _Stopped:
            return


def _stack(rows: list[tuple[int, Segments, int]], size: int) -> dict[str, np.ndarray]:
    """The rows' segments as one batch of `size`, zero rows after them (a short last batch
    keeps the compiled shape; the padding rows' outputs are dropped)."""
    batch = {}
    for key in ("mfcc", "spec", "wav"):
        first = getattr(rows[0][1], key)
        out = np.zeros((size, *first.shape[1:]), np.float32)
        for i, (_, segs, row) in enumerate(rows):
            out[i] = getattr(segs, key)[row]
        batch[key] = out
    return batch


def check_output(out: Path | None, flag: str = "--output", what: str = "predictions",
                 overwrite: bool = False) -> None:
    """Fails before any work when `out` cannot be written (a directory, no permission,
    a read-only or full disk) or is a file already there, unless `overwrite`: creates
    its folder and a scratch file beside it.

    Raises:
      UsageError: `out` is a directory or an existing file. WriteError: it cannot be
        written.
    """
    if out is None:
        return
    if out.is_dir():
        raise UsageError(f"{flag}={out}: is a directory; give a .csv or .jsonl file")
    if out.is_file() and not overwrite:
        raise UsageError(f"{flag}={out}: exists; pass --overwrite to replace it")
    _check_writable(out.parent, out, what)


def check_folder(folder: Path | None, flag: str, what: str) -> None:
    """`check_output` for a folder of outputs: created, and a scratch file written in it.

    Raises:
      UsageError: `folder` is a file. WriteError: it cannot be written.
    """
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag}={folder}: is a file; give a folder")
    _check_writable(folder, folder, what)


def _check_writable(folder: Path, named: Path, what: str) -> None:
    with writing(named, what):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())


class RowWriter:
    """Writes rows as they come: JSONL (.jsonl/.json), else CSV under `header`; stdout
    when `out` is None. Each row is flushed, so a failure later keeps the rows before it."""

    def __init__(self, out: Path | None, header: Sequence[str], what: str):
        self.out, self.what = out, what
        self.jsonl = out is not None and out.suffix.lower() in (".jsonl", ".json")
        with writing(out or "stdout", what):
            self.file: TextIO = sys.stdout if out is None else open(out, "w", newline="")
            if not self.jsonl:
                self._csv = csv.writer(self.file)
                self._csv.writerow(header)
                self.file.flush()

    def write_row(self, record: dict, row: Sequence) -> None:
        """`record` as a JSON line, or `row` (the header's columns) as a CSV line (whole:
        SIGINT and SIGTERM wait for it)."""
        with interrupts.deferred(), writing(self.out or "stdout", self.what):
            if self.jsonl:
                self.file.write(json.dumps(record) + "\n")
            else:
                self._csv.writerow(row)
            self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            with writing(self.out, self.what):
                self.file.close()


class RecordWriter(RowWriter):
    """One row per file: path, status, label, p_<label>..., error."""

    def __init__(self, out: Path | None, labels: Sequence[str]):
        self.labels = list(labels)
        header = ["path", "status", "label", *[f"p_{n}" for n in labels], "error"]
        super().__init__(out, header, "predictions")

    def write(self, r: dict) -> None:
        probs = r.get("probabilities", {})
        self.write_row(r, [
            r["path"], r["status"], r.get("label", ""),
            *[f"{probs[n]:.6f}" if n in probs else "" for n in self.labels],
            r.get("error", ""),
        ])


__all__ = [
    "FileResult", "Predictor", "RecordWriter", "RowWriter", "check_folder", "check_output",
    "expand_inputs", "input_warnings", "predict", "predict_files",
]
