"""Benchmark: bin/predict over a folder of recordings, msjax against a PyTorch pipeline.

What it measures
    Emotion prediction over a folder the script writes: --files recordings of mixed
    lengths (0.4 to 12 s, at 16, 22.05 and 44.1 kHz) and one long recording of
    --long-seconds, with a frozen wav2vec2-base-size encoder (random weights) and the
    MS-EmoBoost head (random weights, classifier included). Throughput is audio seconds
    per wall-clock second over the whole folder, decoding and features included.

      msjax:   `msjax.inference.predict.Predictor` + `predict_files`, what bin/predict runs (with
               its XLA flags and host memory policy, `msjax.runtime.configure`): the
               segments of consecutive files packed into batches of --batch-size (one
               compiled program: encoder and head in one jax.jit), a thread decoding
               and computing features ahead of the model, long files read in windows.
      PyTorch: the same work as a PyTorch user writes it: file after file, the same
               segments (`msjax.features.streaming.file_segments`: the same decoding and numpy
               features, also windowed), in batches of up to --batch-size segments of
               that file, through transformers' Wav2Vec2Model and the head written
               in torch.nn (bench/train_step.py's network, eval mode) under
               torch.inference_mode; the utterance probabilities pooled as msjax does.

    Both load the same weights: the script saves a seeded transformers Wav2Vec2Model
    (bench/encoder.py's checkpoint, which msjax loads through its port) and an msjax
    fold checkpoint whose head parameters are copied into the torch head. The largest
    difference between the two sides' probabilities, per segment and per file, is
    printed (goal: 1e-4). With --dtype bfloat16 msjax predicts in bfloat16 (bin/predict
    --compute_dtype=bfloat16) while PyTorch stays float32; the difference is then only
    reported.

    Each framework runs in its own child process pinned to the same --threads cores.
    The first pass over the folder (XLA compilation; PyTorch/oneDNN set-up) is timed
    apart; then the parent alternates whole passes between the children (order flipped
    every round), so that load from other processes falls on both alike, and reports
    the medians of --repeats passes. Peak memory: each child's peak resident set
    during one pass (sampled every millisecond) and its maximum including loading.

How to run
    python bench/predict.py [--files 12] [--long-seconds 300] [--repeats 3]
                            [--batch-size 8] [--threads N] [--dtype float32|bfloat16]
    python bench/predict.py --only msjax --files 0 --long-seconds 3600 --repeats 0
                            # peak RSS over an hour-long recording

    On a machine shared with other work, take the lock that keeps benchmarks apart:
    `flock LOCKFILE python bench/predict.py`.

What limits it
    The encoder: about 42 GFLOP of float32 matmuls and convolutions per 3 s segment
    (bench/encoder.py counts them), against about 5 for the head's forward (most of it
    AlexNet on the 256x384 image); decoding and features (read twice for a windowed
    file, to find its levels) take well under 1% of the time. A file's last segment is
    zero-padded to 3 s on both sides; msjax also pads the folder's last batch to
    --batch-size, so a short folder costs it up to batch-size - 1 segments of extra work.

    Measured figures, dated, with the machine: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Time the checkout this file belongs to, and reuse its sibling benchmarks' pieces.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder import Child, _make_checkpoint, _max_rss_mib, _peak_rss_during  # noqa: E402

LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
# Spectrogram statistics of the checkpoint: its dB range, as training fits them.
SPEC_RANGE = (-80.0, 0.0)
TOLERANCE = 1e-4


def make_folder(root: Path, files: int, long_seconds: float, seed: int) -> list[Path]:
    """Noise recordings of mixed lengths and rates, and one long one at 16 kHz."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    paths = []
    lengths = [(f"clip_{i:02d}", float(rng.uniform(0.4, 12.0))) for i in range(files)]
    for i, (name, seconds) in enumerate([*lengths, ("long", long_seconds)]):
        rate = 16000 if name == "long" else (16000, 22050, 44100)[i % 3]
        n = round(seconds * rate)
        level = 0.05 * (1.2 + np.sin(np.arange(n) / rate * 0.3))
        wav = (rng.standard_normal(n) * level).astype(np.float32)
        paths.append(root / f"{name}.wav")
        sf.write(paths[-1], wav, rate, subtype="PCM_16")
    return paths


def make_checkpoints(root: Path, seed: int) -> Path:
    """A seeded random wav2vec2-base saved by transformers in root/encoder, and an msjax
    fold checkpoint with it and a seeded random head; the head's parameters are also
    saved as root/head.npz for the torch side. Returns the fold directory."""
    import dataclasses
    import functools

    import flax
    import jax

    import msjax
    from msjax import inference
    from msjax.configs import default
    from msjax.convert.encoders import load_encoder
    from msjax.features.acoustic import FeatureConfig
    from msjax.io import checkpoint
    from msjax.models.emoboost import dummy_batch

    model_cfg = default.get_config().model.to_dict()
    # A zero classifier would predict the uniform distribution: nothing to compare.
    model_cfg["zero_init_classifier"] = False
    encoder_dir = root / "encoder"
    _make_checkpoint(encoder_dir, seed)
    feature_cfg = FeatureConfig()
    encoder = load_encoder(str(encoder_dir))
    model = inference.build_model(model_cfg, len(LABELS), feature_cfg, encoder, False)
    image_size = (256, 384)
    batch = dummy_batch(model, feature_cfg, 1, image_size)
    init = jax.jit(functools.partial(model.init, train=False))
    params = init(jax.random.key(seed), batch)["params"]
    lo, hi = SPEC_RANGE
    norm = {"lo": np.full(200, lo, np.float32), "hi": np.full(200, hi, np.float32)}
    meta = {
        "msjax_version": msjax.__version__, "dataset": "bench", "labels": LABELS, "fold": 0,
        "test_speakers": [], "features": feature_cfg.to_dict(), "image_size": list(image_size),
        "model": model_cfg, "compute_dtype": "float32",
        "ssl": {
            "name": str(encoder_dir), "identity": encoder.identity,
            "normalize": encoder.normalize, "finetune": False, "seed": 0,
            "config": dataclasses.asdict(encoder.config),
        },
    }
    fold = root / "fold_00"
    checkpoint.save_best(fold, 1, {"params": params, "norm": norm}, meta)
    flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
    np.savez(root / "head.npz", **flat, **{f"norm/{k}": v for k, v in norm.items()})
    return fold


class MsjaxRunner:
    """bin/predict's pipeline on the folder."""

    def __init__(self, opts: dict[str, Any]):
        os.environ["JAX_PLATFORMS"] = "cpu"
        from msjax import runtime
        from msjax.inference.predict import Predictor, predict_files

        runtime.configure()  # as bin/predict does, before JAX starts

        self.predict_files = predict_files
        self.predictor = Predictor(
            opts["fold"], batch_size=opts["batch_size"], window_seconds=opts["window_seconds"],
            compute_dtype=opts["dtype"],
        )
        self.paths = opts["paths"]
        self.results: list = []

    def describe(self) -> str:
        import jax

        cores = len(os.sched_getaffinity(0))
        return f"jax {jax.__version__}; cpu, {cores} cores in the affinity mask"

    def run(self) -> dict[str, float]:
        return _timed(self._run)

    def _run(self) -> float:
        self.results = list(self.predict_files(self.predictor, self.paths))
        return sum(r.seconds for r in self.results)

    def outputs(self) -> dict[str, np.ndarray]:
        from msjax import inference

        labels = self.predictor.labels
        return {
            "file": np.array([[r.record["probabilities"][n] for n in labels]
                              for r in self.results]),
            "segment": inference.probabilities(
                np.concatenate([r.segment_logprobs for r in self.results])
            ),
        }



class TorchRunner:
    """The same work in PyTorch, file after file."""

    def __init__(self, opts: dict[str, Any]):
        import torch
        import transformers
        from train_step import _torch_network

        from msjax.configs import default
        from msjax.features.acoustic import FeatureConfig

        torch.set_num_threads(opts["threads"])
        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        self.encoder = transformers.Wav2Vec2Model.from_pretrained(opts["encoder"]).eval()
        self.cfg = FeatureConfig()
        frames = self.cfg.segment_samples  # -> the encoder's frames per segment (149)
        config = self.encoder.config
        for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
            frames = (frames - kernel) // stride + 1
        # The head of make_checkpoints' config, without an encoder inside (features come in).
        self.head = _torch_network(default.get_config().model, frames, None, False).eval()
        head = dict(np.load(opts["head"]))
        self.norm = {k: torch.from_numpy(head.pop(f"norm/{k}")) for k in ("lo", "hi")}
        _port_head(self.head, head)
        self.paths, self.batch_size = opts["paths"], opts["batch_size"]
        # Windows as bin/predict reads them (whole segments).
        segments = max(1, round(opts["window_seconds"] / self.cfg.segment_seconds))
        self.window = segments * self.cfg.segment_samples
        self.segments: list[np.ndarray] = []
        self.files: list[np.ndarray] = []

    def describe(self) -> str:
        import transformers

        attention = self.encoder.config._attn_implementation
        return (f"torch {self.torch.__version__}, transformers {transformers.__version__}; "
                f"cpu, {self.torch.get_num_threads()} threads; attention {attention}")

    def _log_probs(self, segs: Any) -> np.ndarray:
        torch = self.torch
        wav = torch.from_numpy(segs.wav)
        wav = (wav - wav.mean(-1, keepdim=True)) / torch.sqrt(
            wav.var(-1, keepdim=True, unbiased=False) + 1e-7)
        batch = {"ssl": self.encoder(wav).last_hidden_state,
                 "mfcc": torch.from_numpy(segs.mfcc), "spec": torch.from_numpy(segs.spec)}
        logits = self.head(batch, self.norm["lo"], self.norm["hi"])
        return torch.log_softmax(logits, dim=-1).numpy()

    def run(self) -> dict[str, float]:
        return _timed(self._run)

    def _run(self) -> float:
        from msjax.features.acoustic import Segments
        from msjax.features.streaming import file_segments

        self.segments, self.files, audio = [], [], 0
        with self.torch.inference_mode():
            for path in self.paths:
                rows = []
                for segs, n in file_segments(path, self.cfg, self.window):
                    audio += n
                    for i in range(0, len(segs), self.batch_size):
                        part = slice(i, i + self.batch_size)
                        rows.append(self._log_probs(
                            Segments(segs.wav[part], segs.mfcc[part], segs.spec[part])))
                logprobs = np.concatenate(rows)
                self.segments.append(logprobs)
                self.files.append(_softmax(logprobs.astype(np.float64).mean(0)))
        return audio / self.cfg.sample_rate

    def outputs(self) -> dict[str, np.ndarray]:
        return {"file": np.stack(self.files),
                "segment": _softmax(np.concatenate(self.segments).astype(np.float64))}


def _timed(run: Any) -> dict[str, float]:
    """Wall time, audio seconds, peak RSS during `run` (MiB) and the process's maximum."""
    out = {}
    start = time.perf_counter()
    out["rss_mib"] = _peak_rss_during(lambda: out.setdefault("audio", run()))
    out["wall"] = time.perf_counter() - start
    out["max_rss_mib"] = _max_rss_mib()
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _port_head(net: Any, flat: dict[str, np.ndarray]) -> None:
    """Copies msjax's head parameters (flattened with "/") into bench/train_step.py's
    torch network: same module names but AlexNet's, Dense kernels and conv kernels
    transposed, msjax's single LSTM bias into bias_ih (bias_hh is a zero buffer)."""
    import torch

    state = net.state_dict()
    used = set()
    for key, value in flat.items():
        *path, leaf = key.split("/")
        if path[0] == "alexnet":
            path = ["alexnet", path[1].removeprefix("features_")]
        if path[0] == "lstm":
            k, suffix = path[1].removeprefix("layer_"), "_reverse" if path[2] == "backward" else ""
            name, layout = {
                "input_kernel": (f"weight_ih_l{k}", (1, 0)),
                "hidden_kernel": (f"weight_hh_l{k}", (1, 0)),
                "bias": (f"bias_ih_l{k}", None),
            }[leaf]
            name = f"lstm.{name}{suffix}"
        else:
            layout = {"bias": None}.get(leaf, (3, 2, 0, 1) if value.ndim == 4 else (1, 0))
            name = ".".join(path) + (".bias" if leaf == "bias" else ".weight")
        if layout is not None:
            value = value.transpose(layout)
        assert state[name].shape == value.shape, (name, state[name].shape, value.shape)
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
        used.add(name)
    missing = {n for n, p in net.named_parameters()} - used
    assert not missing, f"torch parameters without an msjax value: {sorted(missing)}"
    net.load_state_dict(state)


RUNNERS = {"msjax": MsjaxRunner, "PyTorch": TorchRunner}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--long-seconds", type=float, default=300.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32",
        help="msjax's compute dtype (bin/predict --compute_dtype); PyTorch stays float32",
    )
    parser.add_argument(
        "--only", choices=list(RUNNERS),
        help="run this pipeline alone (e.g. msjax's peak RSS on an hour-long file with "
        "--files 0 --long-seconds 3600 --repeats 0): no ratio, no agreement check",
    )
    args = parser.parse_args()
    names = [args.only] if args.only else list(RUNNERS)

    print("bin/predict over a folder: msjax (packed, overlapped, windowed) vs a PyTorch "
          "pipeline (transformers Wav2Vec2Model + torch head, file by file); msjax "
          f"{args.dtype}, PyTorch float32")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_folder(root / "audio", args.files, args.long_seconds, args.seed)
        # In a process of its own: the children inherit this one's peak RSS figure.
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            fold = pool.submit(make_checkpoints, root, args.seed).result()
        opts = dict(vars(args), paths=paths, fold=str(fold), encoder=str(root / "encoder"),
                    head=str(root / "head.npz"), runners=RUNNERS)
        children = [Child(name, opts) for name in names]
        for child in children:
            child.ready()
        info = {c.name: c.call("describe") for c in children}
        first = {c.name: c.call("run") for c in children}
        passes: dict[str, list[dict[str, float]]] = {c.name: [] for c in children}
        for r in range(args.repeats):
            for c in children if r % 2 == 0 else children[::-1]:
                passes[c.name].append(c.call("run"))
        outputs = {c.name: c.call("outputs") for c in children}
        for c in children:
            c.stop()

    audio = first[names[0]]["audio"]
    print(f"folder: {args.files} files of 0.4-12 s + one of {args.long_seconds:g} s, "
          f"{audio:.0f} s of audio; batch {args.batch_size}; windows of "
          f"{args.window_seconds:g} s; {args.threads} threads each")
    for name in names:
        print(f"{name}: {info[name]}")
    speed = {}
    for name in names:
        # Without repeats, the first pass (compilation included) is all there is.
        runs = passes[name] or [first[name]]
        walls = [p["wall"] for p in runs]
        speed[name] = audio / statistics.median(walls)
        rss = max(p["rss_mib"] for p in runs)
        kind = f"median of {len(walls)} passes" if passes[name] else "first pass only"
        print(f"  {name:8s} {speed[name]:6.2f} audio s per wall s ({kind}: "
              f"{' '.join(f'{w:.1f}' for w in walls)} s; first pass "
              f"{first[name]['wall']:.1f} s)  peak RSS in a pass {rss:,.0f} MiB, incl. "
              f"loading {runs[-1]['max_rss_mib']:,.0f} MiB")
    if args.only:
        return 0
    print(f"ratio msjax/PyTorch: {speed['msjax'] / speed['PyTorch']:.2f}x; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    worst = 0.0
    for kind in ("segment", "file"):
        diff = float(np.abs(outputs["msjax"][kind] - outputs["PyTorch"][kind]).max())
        worst = max(worst, diff)
        print(f"max |probability difference| per {kind}: {diff:.2e}")
    if args.dtype != "float32":
        return 0  # the difference above is the figure; the float32 bound does not apply
    print(f"agreement within {TOLERANCE:g}: {'OK' if worst <= TOLERANCE else 'FAILED'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
