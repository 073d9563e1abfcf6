"""Benchmark: the SSL encoder forward pass, msjax against transformers' PyTorch Wav2Vec2Model.

What it measures
    Inference (no gradients) of a wav2vec2-base encoder (7 conv layers, 12 transformer
    layers of width 768, 94 M parameters) on a batch of --batch-size segments of --seconds
    at 16 kHz, 8 x 3 s by default (the segments MS-EmoBoost feeds it): waveform [B, N] ->
    last_hidden_state [B, T, 768], T = 149 for 3 s.

      msjax:   msjax.models.ssl.SSLEncoder loaded with msjax.convert.hf.load_ssl; the whole
               forward is one jax.jit (a single XLA program), in a process with the bin/
               commands' XLA flags and host memory policy (msjax.runtime.configure).
      PyTorch: transformers.Wav2Vec2Model in eval mode under torch.inference_mode
               (its default SDPA attention).

    The weights are random but shared: the script seeds torch, builds
    Wav2Vec2Model(Wav2Vec2Config()) (the base size) with transformers' own initialisation,
    saves it with save_pretrained, and each side loads that directory. Both get the same
    waveform (Gaussian noise, normalised to zero mean and unit variance per segment as the
    checkpoint's preprocessor asks); compute time does not depend on the values.

    Each framework runs in its own child process (separate peak-memory figures, no shared
    thread pools), pinned to the same --threads cores: torch.set_num_threads(N), and XLA
    sizes its CPU thread pool from the process's CPU affinity. The first calls (XLA
    compilation; PyTorch/oneDNN set-up) are timed apart. Then the parent alternates timed
    calls between the two children, so that load from other processes on a shared machine
    hits both alike, and reports the median and the best of --repeats calls each; the
    throughput ratio msjax / PyTorch is taken from the medians (the best-call ratio is
    printed too). The two last_hidden_states must agree within 1e-4 in float32 (exit
    status 1 otherwise). With --dtype bfloat16 msjax computes in bfloat16 while PyTorch
    stays float32, and the difference is only reported.

How to run
    python bench/encoder.py [--platform cpu|gpu] [--threads N] [--batch-size 8]
                            [--seconds 3] [--repeats 7] [--dtype float32|bfloat16]

    On a machine shared with other work, take the lock that keeps benchmarks apart:
    `flock LOCKFILE python bench/encoder.py`. --platform gpu runs msjax on CUDA (needs
    jax with CUDA support) and PyTorch on CUDA when its build has it (else on the CPU, as
    the output then says); float32 matmuls run at full precision on both sides
    (jax_default_matmul_precision=highest, TF32 off in torch) so that the 1e-4 check holds.

What limits it
    The work is counted from the config, 2 FLOPs per multiply-add of the convolutions and
    matmuls (norms, GELU and softmax are left out; they are well under 1 %): for 8 x 3 s,
    339 GFLOP per batch, 42 per segment: conv feature extractor 118, feature projection
    1, positional conv 11, transformer layers 209 (of which attention scores 8). XLA's own
    count of the compiled program is printed beside it (338). Both frameworks spend nearly
    all their time in large float32 matmuls and convolutions, so the ceiling is the cores'
    float32 FMA rate: on the 2-core AVX-512 machine this was written on (two FMA units,
    64 FLOP/cycle/core), 330-420 GFLOP/s at 2.6-3.3 GHz. The script measures each
    framework's large-matmul rate (2048^3, best of 5) as the practical ceiling and prints
    the achieved rate against it.

    Measured figures, dated, with the machine: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

# Time the checkout this file belongs to, not whichever msjax happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE_RATE = 16000
TOLERANCE = 1e-4
MATMUL_SIZE = {"cpu": 2048, "gpu": 8192}


def count_flops(config: dict[str, Any], n_samples: int, batch_size: int) -> dict[str, float]:
    """FLOPs of one forward pass (2 per multiply-add of convs and matmuls), by part.

    Args:
        config: a wav2vec2/HuBERT config.json dict.
        n_samples: samples per segment.
        batch_size: segments per batch.

    Returns:
        FLOPs per batch for "conv", "projection", "pos_conv", "transformer", "attention"
        (the score and value products, part of "transformer") and "total".
    """
    length, channels, conv = n_samples, 1, 0.0
    for width, kernel, stride in zip(
        config["conv_dim"], config["conv_kernel"], config["conv_stride"], strict=True
    ):
        length = (length - kernel) // stride + 1
        conv += 2.0 * length * kernel * channels * width
        channels = width
    dim, inner = config["hidden_size"], config["intermediate_size"]
    group_width = dim // config["num_conv_pos_embedding_groups"]
    pos_conv = 2.0 * length * config["num_conv_pos_embeddings"] * group_width * dim
    layers = config["num_hidden_layers"]
    attention = layers * 4.0 * length * length * dim
    dense = layers * 2.0 * length * (4 * dim * dim + 2 * dim * inner)
    parts = {
        "conv": conv,
        "projection": 2.0 * length * channels * dim,
        "pos_conv": pos_conv,
        "transformer": dense + attention,
        "attention": attention,
    }
    parts = {name: value * batch_size for name, value in parts.items()}
    parts["total"] = sum(v for k, v in parts.items() if k != "attention")
    return parts


def _max_rss_mib() -> float:
    """Highest resident set size this process has had so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_during(fn: Any) -> float:
    """Highest resident set size (MiB) while `fn` runs, sampled every millisecond.

    Both frameworks release the GIL while they compute, so the sampling thread runs.
    """
    samples, done = [_rss_mib()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_rss_mib())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(samples)


def _best_seconds(fn: Any, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class MsjaxRunner:
    """The msjax encoder in one jitted function, on the child's JAX platform."""

    def __init__(self, opts: dict[str, Any]):
        os.environ["JAX_PLATFORMS"] = "cuda" if opts["platform"] == "gpu" else "cpu"
        # Leave GPU memory to the PyTorch child; peak_bytes_in_use still counts real use.
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        import jax
        import jax.numpy as jnp

        from msjax import runtime
        from msjax.convert.hf import load_ssl

        runtime.configure()  # as the bin/ commands do, before JAX starts
        if opts["platform"] == "gpu" and opts["dtype"] == "float32":
            jax.config.update("jax_default_matmul_precision", "highest")
        self.jax, self.jnp = jax, jnp
        self.dtype = jnp.dtype(opts["dtype"])
        model = load_ssl(opts["checkpoint"], dtype=self.dtype)
        module = model.module
        self.params = jax.device_put(model.params)
        self.forward = jax.jit(
            lambda params, wav: module.apply({"params": params}, wav)["last_hidden_state"]
        )
        self.compiled = None
        self.wav = None
        self.loaded_rss = _rss_mib()
        self.matmul_size = MATMUL_SIZE[opts["platform"]]

    def describe(self) -> str:
        import flax

        device = self.jax.devices()[0]
        if device.platform == "cpu":
            where = f"cpu, {len(os.sched_getaffinity(0))} cores in the affinity mask"
        else:
            where = f"{device.platform} ({device.device_kind})"
        flags = os.environ.get("XLA_FLAGS") or "none"
        return f"jax {self.jax.__version__}, flax {flax.__version__}; {where}; XLA_FLAGS {flags}"

    def first_calls(self, wav: np.ndarray) -> dict[str, float]:
        self.wav = self.jax.device_put(wav)
        start = time.perf_counter()
        self.compiled = self.forward.lower(self.params, self.wav).compile()
        compile_s = time.perf_counter() - start
        first_s = self.run()
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return {"compile_s": compile_s, "first_s": first_s, "flops": float(cost.get("flops", 0))}

    def run(self) -> float:
        start = time.perf_counter()
        self.compiled(self.params, self.wav).block_until_ready()
        return time.perf_counter() - start

    def output(self) -> np.ndarray:
        return np.asarray(self.compiled(self.params, self.wav), np.float32)

    def matmul_gflops(self) -> float:
        n = self.matmul_size
        a = self.jnp.ones((n, n), self.dtype)
        # Accumulating in float32, as the encoder's matmuls do.
        dot = self.jax.jit(
            lambda x, y: self.jax.lax.dot(x, y, preferred_element_type=self.jnp.float32)
        )
        return 2.0 * n**3 / _best_seconds(lambda: dot(a, a).block_until_ready()) / 1e9

    def memory(self) -> dict[str, float | None]:
        forward = _peak_rss_during(self.run)
        stats = self.jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return {
            "rss_loaded_mib": self.loaded_rss,
            "rss_forward_mib": forward,
            "rss_max_mib": _max_rss_mib(),
            "device_peak_mib": peak / 2**20 if peak is not None else None,
        }


class TorchRunner:
    """transformers' Wav2Vec2Model, eval mode, under torch.inference_mode."""

    def __init__(self, opts: dict[str, Any]):
        import torch
        import transformers

        torch.set_num_threads(opts["threads"])
        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        self.cuda = opts["platform"] == "gpu" and torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        model = transformers.Wav2Vec2Model.from_pretrained(opts["checkpoint"], dtype=torch.float32)
        self.model = model.eval().to(self.device)
        self.wav = None
        self.loaded_rss = _rss_mib()
        self.matmul_size = MATMUL_SIZE["gpu" if self.cuda else "cpu"]

    def describe(self) -> str:
        import transformers

        torch = self.torch
        if self.cuda:
            where = f"cuda ({torch.cuda.get_device_name()})"
        else:
            where = f"cpu, {torch.get_num_threads()} threads"
        attention = self.model.config._attn_implementation
        return (
            f"torch {torch.__version__}, transformers {transformers.__version__}; {where}; "
            f"attention {attention}"
        )

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def first_calls(self, wav: np.ndarray) -> dict[str, float]:
        self.wav = self.torch.from_numpy(wav).to(self.device)
        return {"first_s": self.run(), "second_s": self.run()}

    def run(self) -> float:
        self._sync()
        start = time.perf_counter()
        with self.torch.inference_mode():
            self.model(self.wav)
        self._sync()
        return time.perf_counter() - start

    def output(self) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.wav).last_hidden_state.float().cpu().numpy()

    def matmul_gflops(self) -> float:
        n = self.matmul_size
        a = self.torch.ones((n, n), device=self.device)

        def matmul():
            a @ a
            self._sync()

        return 2.0 * n**3 / _best_seconds(matmul) / 1e9

    def memory(self) -> dict[str, float | None]:
        forward = _peak_rss_during(self.run)
        peak = self.torch.cuda.max_memory_allocated() if self.cuda else None
        return {
            "rss_loaded_mib": self.loaded_rss,
            "rss_forward_mib": forward,
            "rss_max_mib": _max_rss_mib(),
            "device_peak_mib": peak / 2**20 if peak is not None else None,
        }


RUNNERS = {"msjax": MsjaxRunner, "PyTorch": TorchRunner}


def _serve(name: str, conn: Connection, opts: dict[str, Any]) -> None:
    """Child process: pins its cores, builds one runner and answers the parent's calls."""
    try:
        cores = sorted(os.sched_getaffinity(0))[: opts["threads"]]
        os.sched_setaffinity(0, cores)  # Before the import: XLA sizes its pool from it.
        # Other benchmarks pass their own runner classes (bench/predict.py).
        runner = opts.get("runners", RUNNERS)[name](opts)
        conn.send(("ok", None))
    except Exception:  # reported by the parent, which then stops
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        method, args = conn.recv()
        if method is None:
            return
        try:
            conn.send(("ok", getattr(runner, method)(*args)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class Child:
    """One framework's child process and the calls the parent makes to it."""

    def __init__(self, name: str, opts: dict[str, Any]):
        self.name = name
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_serve, args=(name, child_conn, opts))
        self.process.start()

    def _answer(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise SystemExit(f"{self.name}: the child process died") from None
        if status == "error":
            raise SystemExit(f"{self.name}: the child process failed:\n{value}")
        return value

    def ready(self) -> None:
        self._answer()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        return self._answer()

    def stop(self) -> None:
        self.conn.send((None, ()))
        self.process.join()


def _make_checkpoint(root: Path, seed: int) -> dict[str, Any]:
    """Saves a seeded random wav2vec2-base model with transformers; returns its config."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config())
    model.save_pretrained(root)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(root)
    return model.config.to_dict()


def _waveforms(batch_size: int, n_samples: int, seed: int) -> np.ndarray:
    """Noise normalised per segment (zero mean, unit variance, as the preprocessor does)."""
    wav = np.random.default_rng(seed).standard_normal((batch_size, n_samples))
    wav = (wav - wav.mean(-1, keepdims=True)) / np.sqrt(wav.var(-1, keepdims=True) + 1e-7)
    return wav.astype(np.float32)


def _time_alternately(children: list[Child], repeats: int) -> dict[str, list[float]]:
    """Seconds per call for each child, the calls interleaved (order flipped every round)."""
    times: dict[str, list[float]] = {child.name: [] for child in children}
    for i in range(repeats):
        for child in children if i % 2 == 0 else children[::-1]:
            times[child.name].append(child.call("run"))
    return times


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads must be 1..{len(os.sched_getaffinity(0))} (the usable cores)")
    n_samples = int(round(args.seconds * SAMPLE_RATE))

    print("SSL encoder forward: msjax SSLEncoder (jax.jit) vs transformers Wav2Vec2Model")
    print(
        f"input: batch {args.batch_size} x {n_samples} samples ({args.seconds:g} s at 16 kHz), "
        f"wav2vec2-base with random weights; msjax {args.dtype}, PyTorch float32"
    )
    print(
        f"platform {args.platform}; {args.threads} threads for each framework "
        f"(torch.set_num_threads; XLA: CPU affinity of {args.threads} cores); "
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = _make_checkpoint(Path(tmp), args.seed)
        opts = dict(vars(args), checkpoint=tmp)
        children = [Child(name, opts) for name in RUNNERS]
        for child in children:
            child.ready()
        wav = _waveforms(args.batch_size, n_samples, args.seed)
        info = {child.name: child.call("describe") for child in children}
        first = {child.name: child.call("first_calls", wav) for child in children}
        times = _time_alternately(children, args.repeats)
        outputs = {child.name: child.call("output") for child in children}
        peaks = {child.name: child.call("matmul_gflops") for child in children}
        memory = {child.name: child.call("memory") for child in children}
        for child in children:
            child.stop()

    flops = count_flops(config, n_samples, args.batch_size)
    report = _report(args, flops, info, first, times, peaks, memory)
    print("\n".join(report))
    diff = float(np.max(np.abs(outputs["msjax"] - outputs["PyTorch"])))
    if args.dtype == "float32":
        verdict = "OK" if diff <= TOLERANCE else "FAILED"
        print(f"max |last_hidden_state difference|: {diff:.2e} (limit {TOLERANCE:g}): {verdict}")
        return 0 if diff <= TOLERANCE else 1
    print(f"max |last_hidden_state difference| ({args.dtype} vs float32 PyTorch): {diff:.2e}")
    return 0


def _report(
    args: argparse.Namespace,
    flops: dict[str, float],
    info: dict[str, str],
    first: dict[str, dict[str, float]],
    times: dict[str, list[float]],
    peaks: dict[str, float],
    memory: dict[str, dict[str, float | None]],
) -> list[str]:
    """The printed figures, one line each."""
    names = list(RUNNERS)
    median = {n: statistics.median(times[n]) for n in names}
    best = {n: min(times[n]) for n in names}
    gflop = flops["total"] / 1e9
    jax_first, torch_first = first["msjax"], first["PyTorch"]
    lines = [f"{n}: {info[n]}" for n in names]
    lines.append(
        f"work: {gflop:.1f} GFLOP per batch (conv extractor {flops['conv'] / 1e9:.1f}, "
        f"projection {flops['projection'] / 1e9:.1f}, positional conv "
        f"{flops['pos_conv'] / 1e9:.1f}, transformer {flops['transformer'] / 1e9:.1f}); "
        f"XLA's count of the compiled program: {jax_first['flops'] / 1e9:.1f} GFLOP"
    )
    rows = [
        ("", names),
        (
            "warm-up, not timed (s)",
            [
                f"compile {jax_first['compile_s']:.1f} + 1st {jax_first['first_s']:.2f}",
                f"1st {torch_first['first_s']:.2f}, 2nd {torch_first['second_s']:.2f}",
            ],
        ),
        (f"s per batch, median of {args.repeats}", [f"{median[n]:.3f}" for n in names]),
        ("s per batch, best", [f"{best[n]:.3f}" for n in names]),
        ("throughput, median (utt/s)", [f"{args.batch_size / median[n]:.2f}" for n in names]),
        ("GFLOP/s, median", [f"{gflop / median[n]:.0f}" for n in names]),
        (
            f"{MATMUL_SIZE[args.platform]}^3 matmul GFLOP/s",
            [f"{peaks[n]:.0f}" for n in names],
        ),
        ("GFLOP/s / matmul GFLOP/s", [f"{gflop / median[n] / peaks[n]:.0%}" for n in names]),
        ("RSS after loading (MiB)", [_mib(memory[n]["rss_loaded_mib"]) for n in names]),
        ("peak RSS in a forward (MiB)", [_mib(memory[n]["rss_forward_mib"]) for n in names]),
        ("peak RSS incl. loading (MiB)", [_mib(memory[n]["rss_max_mib"]) for n in names]),
        ("peak device memory (MiB)", [_mib(memory[n]["device_peak_mib"]) for n in names]),
    ]
    lines += [f"  {label:<30}" + "".join(f"{v:>26}" for v in values) for label, values in rows]
    lines.append(
        "  all timed calls (s): "
        + "; ".join(f"{n} " + " ".join(f"{t:.2f}" for t in times[n]) for n in names)
    )
    lines.append(
        f"ratio msjax/PyTorch throughput: {median['PyTorch'] / median['msjax']:.2f}x "
        f"(medians), {best['PyTorch'] / best['msjax']:.2f}x (best calls); "
        f"load average at end {os.getloadavg()[0]:.2f}"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
