"""Benchmark: one MS-EmoBoost training step, msjax against a PyTorch peer.

What is timed is a whole optimisation step on one fixed batch: the spectrogram-to-image
transform, forward and backward through the full network (Bi-LSTM + attention on the
MFCCs, AlexNet + attention on the image, the enhancement and the classifier), the
cross-entropy loss and an Adam update. Two workloads (`--mode`):

  cached    SSL features given as input ([B, 149, 768], wav2vec2-base on 3 s); batch 32,
            as the paper trains EMODB.
  finetune  an encoder with random weights (`--config.ssl.name`, default `random:base`;
            `random:large` for Large) runs inside the step on the raw 3 s waveforms and
            is trained with the head, with the fine-tuning settings of the training
            config's `ssl` section (time masking, LayerDrop, frozen conv feature
            extractor, optional rematerialisation); batch 4.

  msjax    the training code itself: `msjax.train.steps.make_steps` (jitted, state
           donated) on the model `msjax.inference.build_model` builds, and a state
           from `create_state`, in a process with bin/train's XLA flags and host memory policy
           (`msjax.runtime.configure`, free memory released after
           compiling); `--dtype=bfloat16` is its mixed precision (bf16 compute, f32
           master weights).
  PyTorch  the same network written below with torch.nn (torchvision's AlexNet layers,
           nn.LSTM, transformers' Wav2Vec2Model built from the same config), eager
           mode, torch.optim.Adam; bf16 (`--torch-dtype`, by default `--dtype`) runs
           under autocast.

The settings are the training config (configs/default.py: `model`, `ssl`,
`compute_dtype`) plus this script's own fields, all overridden with the same
`--config.x=y` flags as training:

  mode           cached | finetune | both (default both)
  batches        batch sizes, run one after another (default (0,): 32 cached, 4 finetune)
  steps, warmup  timed steps per framework (3) and untimed steps first (2: the
                 zero-initialised classifier passes no gradient back in the first step,
                 so its cost is not typical)
  torch_dtype    PyTorch compute dtype ("" = compute_dtype; bfloat16 = autocast)
  threads        threads and pinned cores per framework (0 = all cores)
  platform       cpu | gpu
  compare_remat  finetune: a third child, msjax with the encoder's transformer layers
                 rematerialised (`ssl.remat_policy`), besides msjax without
  memory_budget_gib  the memory the largest-batch estimate fits into (24)

Both networks have the same layers and shapes; the parameter counts are printed and
asserted equal (the LSTM's second bias b_hh is a constant zero buffer in the PyTorch
network, since msjax keeps the single summed bias b_ih + b_hh).

How it is timed. Each framework lives in its own child process, pinned to the same
cores with the same thread count. Each child builds its network, compiles (msjax) and
runs `--warmup` steps, all timed apart and excluded. The parent then asks the two
children for one step at a time, alternating between them, so that load from other
processes on a shared machine falls on both alike; steps/s is one over the median step time
(a step slowed by a burst of outside load moves the mean, not the median), and the
mean, the extremes and the process CPU time per step are printed too. Peak
memory is each child's maximum resident set size on CPU (weights, Adam state,
activations and the runtime itself), or the framework's peak device allocation on GPU;
each batch size runs in fresh children. On Linux the peak of the steps alone ("steps":
the count restarted after setting up, so without a random init's or the compiler's
peak) is printed too.
XLA_FLAGS and other environment variables reach the children.

    python bench/train_step.py                      # both modes, CPU, float32
    python bench/train_step.py --config.mode=cached --config.batches=32, --config.threads=1
    python bench/train_step.py --config.mode=finetune --config.compute_dtype=bfloat16 \
        --config.torch_dtype=float32
    python bench/train_step.py --config.mode=finetune --config.compare_remat=true \
        --config.ssl.remat_policy=dots_with_no_batch_dims_saveable --config.batches=2,4
    python bench/train_step.py --config.platform=gpu  # needs jax[cuda] and a CUDA torch

Largest batch in `memory_budget_gib`, printed when `batches` has two sizes or more.
msjax: the compiled step's own account of its memory (`memory_analysis()`: arguments +
outputs - donated + temporaries), linear in the batch, plus the process's memory beyond
it (runtime, code, host copies: the steps' measured peak RSS minus that account, the
largest over the batches run). PyTorch: the steps' measured peak RSS, extrapolated
linearly from the two largest batches run. Both extrapolate from small batches
because running a Large encoder at tens of segments is slow on a CPU.

On a machine shared with other work, run it under the lock that keeps benchmarks
apart: `flock LOCKFILE python bench/train_step.py ...`.

What limits it. A cached step at batch 32 is about 0.44 TFLOP of matmuls and
convolutions (AlexNet on 256x384 images 56%, the Bi-LSTM 28%, the MFCC attention 14%);
a fine-tuning step at batch 4 about 0.45 TFLOP (the encoder's transformer, forward and
backward, 75%; its frozen conv feature extractor 13%). Both frameworks run these on
vendor kernels at a similar rate, so on a CPU either step is compute bound and the
ratio is decided kernel by kernel.

The Bi-LSTM is the part bound by latency rather than FLOPs: its 2 layers x 300
timesteps (600 forward, 600 backward) run one after another, each a small
[2, B, 256] x [256, 1024] matmul plus elementwise gates, which XLA runs as a dozen
small kernels. At small batch on a CPU, and on a GPU at any batch, this loop sets the
floor of the step time.

Measured figures, dated, with the machine: bench/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

# Measure the msjax of this checkout, whatever else is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msjax.configs import default  # noqa: E402  (after the path insert)

CLASSES = 7
IMAGE_SIZE = (256, 384)
DEFAULT_BATCH = {"cached": 32, "finetune": 4}
TITLES = {
    "cached": "MS-EmoBoost train step over cached SSL features",
    "finetune": "MS-EmoBoost train step with the SSL encoder fine-tuned inside",
}
# Spectrograms are dB relative to the utterance maximum, top 80 dB.
SPEC_RANGE = (-80.0, 0.0)


def get_config() -> ml_collections.ConfigDict:
    """The training config (model, ssl, compute_dtype, optim) plus the benchmark's fields."""
    config = default.get_config()
    config.ssl.name = "random:base"
    config.mode = "both"
    config.batches = (0,)
    config.steps = 3
    config.warmup = 2
    config.torch_dtype = ""
    config.threads = 0
    config.platform = "cpu"
    config.compare_remat = False
    config.memory_budget_gib = 24.0
    return config


_CONFIG = config_flags.DEFINE_config_dict("config", get_config())
_CHILD = flags.DEFINE_enum(
    "child", None, ["msjax", "msjax-remat", "torch"],
    "internal: run as the benchmark's child for this framework (settings on stdin)",
)

Step = Callable[[], None]


def make_batch(mode: str, batch_size: int, ssl_frames: int, ssl_dim: int) -> dict[str, np.ndarray]:
    """A fixed random batch in the layout the training loop feeds the step.

    Returns:
        mfcc [B, 300, 40], spec [B, 200, 300], label [B], mask [B], and ssl [B, F, D]
        (cached) or wav [B, 48000] (finetune).
    """
    from msjax.features.acoustic import FeatureConfig

    cfg = FeatureConfig()
    rng = np.random.default_rng(0)
    spec = rng.uniform(*SPEC_RANGE, (batch_size, cfg.spec_bins, cfg.segment_frames))
    batch = {
        "mfcc": rng.standard_normal((batch_size, cfg.segment_frames, cfg.n_mfcc), np.float32),
        "spec": spec.astype(np.float32),
        "label": rng.integers(0, CLASSES, batch_size).astype(np.int32),
        "mask": np.ones(batch_size, np.float32),
    }
    if mode == "cached":
        batch["ssl"] = rng.standard_normal((batch_size, ssl_frames, ssl_dim), np.float32)
    else:
        batch["wav"] = 0.1 * rng.standard_normal((batch_size, cfg.segment_samples), np.float32)
    return batch


def _norm_stats() -> dict[str, np.ndarray]:
    """Per-bin min-max statistics ([200] each) spanning the batch's dB range."""
    lo, hi = SPEC_RANGE
    return {"lo": np.full(200, lo, np.float32), "hi": np.full(200, hi, np.float32)}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Restarts the kernel's peak-RSS count (VmHWM), so that the peak of the training
    steps shows apart from that of setting up (random init, compilation)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _step_peak_rss_mib() -> float:
    """Peak RSS since `_reset_peak_rss` in MiB (Linux), or NaN where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------- msjax


def setup_msjax(
    config: ml_collections.ConfigDict, remat: bool
) -> tuple[Step, Callable[[], float], dict[str, Any]]:
    """Builds the model and state as training does and compiles the train step.

    Returns:
        (one synchronised step, peak memory in MiB, facts: params, compile_s and the
        compiled step's memory account in MiB).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from msjax import runtime
    from msjax.convert.encoders import load_configured_encoder
    from msjax.features.acoustic import FeatureConfig
    from msjax.inference import build_model, wav_normalizer
    from msjax.models.emoboost import dummy_batch
    from msjax.train import setup
    from msjax.train.steps import create_state, make_mesh, make_steps

    feature_cfg = FeatureConfig()
    finetune = config.mode == "finetune"
    with config.unlocked():
        config.ssl.finetune = finetune
        config.ssl.remat = remat
    encoder = load_configured_encoder(config.ssl)
    model = build_model(config.model, CLASSES, feature_cfg, encoder, finetune)

    init_batch = dummy_batch(model, feature_cfg, 1, IMAGE_SIZE)
    init = jax.jit(lambda rng, b: model.init(rng, b, train=False)["params"])
    params = dict(init(jax.random.key(0), init_batch))
    if finetune:
        params["encoder"] = encoder.params

    mesh = make_mesh()
    tx = optax.adam(config.optim.learning_rate)
    train_step, _ = make_steps(
        model, tx, mesh, image_size=IMAGE_SIZE,
        normalize_wav=wav_normalizer(encoder, finetune),
        compute_dtype=jnp.dtype(config.compute_dtype),
    )
    state = create_state(params, tx, _norm_stats())
    batch = make_batch(config.mode, config.batch, model.ssl_frames, model.ssl_dim)
    batch = jax.device_put(batch, setup.data_sharding(mesh))
    rng = jax.random.key(1)

    start = time.perf_counter()
    compiled = train_step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    runtime.release_free_memory()  # as training does after compiling its step
    mem = compiled.memory_analysis()
    account = (
        mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    holder = {"state": state}

    def step() -> None:
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        jax.block_until_ready((holder["state"], metrics))

    def peak_mib() -> float:
        device = jax.devices()[0]
        if device.platform == "cpu":
            return _rss_mib()
        return device.memory_stats()["peak_bytes_in_use"] / 2**20

    num_params = sum(x.size for x in jax.tree.leaves(params))
    facts = {
        "params": num_params, "compile_s": compile_s, "account_mib": account / 2**20,
        "temp_mib": mem.temp_size_in_bytes / 2**20,
    }
    return step, peak_mib, facts


# --------------------------------------------------------------------------- PyTorch


def _torch_network(
    model_config: ml_collections.ConfigDict, ssl_frames: int,
    ssl_config: dict[str, Any] | None, freeze_feature_encoder: bool,
):
    """MS-EmoBoost in torch.nn, layer for layer the network of msjax.models.emoboost.

    Args:
        model_config: the training config's `model` section.
        ssl_frames: F.
        ssl_config: transformers Wav2Vec2Config fields of an encoder to run inside, or
            None for cached features [B, F, 768].
    """
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    class ResidualSelfAttention(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))

        def forward(self, x):
            scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
            return x + torch.softmax(scores, dim=-1) @ self.value(x)

    def single_bias_lstm(in_features: int, hidden: int, dropout: float) -> nn.LSTM:
        lstm = nn.LSTM(
            in_features, hidden, 2, batch_first=True, bidirectional=True, dropout=dropout
        )
        for name in [n for n in lstm._flat_weights_names if n.startswith("bias_hh")]:
            zeros = torch.zeros_like(getattr(lstm, name))
            delattr(lstm, name)
            lstm.register_buffer(name, zeros)
        lstm._init_flat_weights()  # re-collect the tensors it hands to the kernel
        return lstm

    class EmoBoost(nn.Module):
        def __init__(self):
            super().__init__()
            m = model_config
            hidden, width = m["lstm_hidden"], 2 * m["lstm_hidden"]
            self.encoder = None
            if ssl_config is not None:
                from transformers import Wav2Vec2Config, Wav2Vec2Model

                self.encoder = Wav2Vec2Model(Wav2Vec2Config(**ssl_config))
                if freeze_feature_encoder:
                    self.encoder.freeze_feature_encoder()
            self.alexnet = torchvision.models.alexnet(weights=None).features
            self.pool = nn.AdaptiveAvgPool2d((6, 6))
            self.spec_attention = ResidualSelfAttention(256)
            self.spec_linear = nn.Linear(256 * 36, m["branch_dim"])
            self.lstm = single_bias_lstm(40, hidden, m["lstm_dropout"])
            self.mfcc_attention = ResidualSelfAttention(width)
            self.mfcc_linear = nn.Linear(300 * width, m["branch_dim"])
            self.enhance = nn.Linear(2 * m["branch_dim"], ssl_frames)
            dim = ssl_config["hidden_size"] if ssl_config else 768
            self.classifier = nn.Linear(dim, CLASSES)
            nn.init.zeros_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)
            self.dropout = nn.Dropout(m["dropout"])
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def image(self, spec, lo, hi):
            """msjax.features.image.spec_to_image in NCHW: [B, 200, 300] -> [B, 3, 256, 384]."""
            span = torch.where(hi - lo < 1e-6, torch.ones_like(hi), hi - lo)
            scaled = ((spec - lo[:, None]) / span[:, None]).clamp(0.0, 1.0).flip(1)
            image = F.interpolate(scaled[:, None], IMAGE_SIZE, mode="bilinear")
            return (image - self.mean) / self.std

        def forward(self, batch, lo, hi):
            if self.encoder is None:
                x_w = batch["ssl"]
            else:
                wav = batch["wav"]
                mean = wav.mean(-1, keepdim=True)
                var = wav.var(-1, keepdim=True, unbiased=False)
                x_w = self.encoder((wav - mean) / torch.sqrt(var + 1e-7)).last_hidden_state
            spec = self.pool(self.alexnet(self.image(batch["spec"], lo, hi)))  # [B, 256, 6, 6]
            tokens = self.spec_attention(spec.flatten(2).transpose(1, 2))  # [B, 36, 256]
            spec = F.relu(self.spec_linear(self.dropout(tokens.transpose(1, 2).flatten(1))))
            seq, _ = self.lstm(F.normalize(batch["mfcc"], p=2, dim=2))  # [B, 300, 512]
            seq = self.mfcc_attention(seq)
            mfcc = F.relu(self.mfcc_linear(self.dropout(seq.flatten(1))))
            weights = F.relu(self.enhance(self.dropout(torch.cat([spec, mfcc], dim=-1))))
            pooled = torch.bmm(weights[:, None].to(x_w.dtype), x_w)[:, 0]  # [B, D]
            return self.classifier(self.dropout(pooled))

    return EmoBoost()


def _ssl_config(config: ml_collections.ConfigDict):
    """The msjax SSLConfig of the benchmark's `random:<preset>` encoder, fine-tuning set."""
    from msjax.models.encoder import PRESETS, RANDOM_PREFIX
    from msjax.models.ssl import SSLConfig

    name = config.ssl.name
    if not name.startswith(RANDOM_PREFIX) or name[len(RANDOM_PREFIX):] not in PRESETS:
        sys.exit(f"--config.ssl.name={name}: the benchmark builds random:<preset> encoders only")
    ssl = config.ssl
    return SSLConfig(
        **PRESETS[name[len(RANDOM_PREFIX):]], mask_time_prob=ssl.mask_time_prob,
        mask_time_length=ssl.mask_time_length, layerdrop=ssl.layerdrop,
    )


def _hf_config(ssl_config: Any) -> dict[str, Any]:
    """transformers Wav2Vec2Config fields equal to an msjax SSLConfig's."""
    fields = dataclasses.asdict(ssl_config)
    fields.pop("freeze_feature_encoder")
    fields.pop("model_type")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def setup_torch(
    config: ml_collections.ConfigDict,
) -> tuple[Step, Callable[[], float], dict[str, Any]]:
    """Builds the PyTorch network, its Adam optimiser and an eager train step.

    Returns:
        (one synchronised step, peak memory in MiB, facts: params, compile_s = 0).
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if config.platform == "gpu" else "cpu")
    ssl_config = _ssl_config(config)
    ssl_frames = ssl_config.num_frames(48000)
    hf_config = _hf_config(ssl_config) if config.mode == "finetune" else None
    model = _torch_network(
        config.model, ssl_frames, hf_config, config.ssl.freeze_feature_encoder
    ).to(device).train()
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], config.optim.learning_rate
    )

    data = make_batch(config.mode, config.batch, ssl_frames, ssl_config.hidden_size)
    batch = {k: torch.from_numpy(v).to(device) for k, v in data.items()}
    labels = batch.pop("label").long()
    mask = batch.pop("mask")
    norm = {k: torch.from_numpy(v).to(device) for k, v in _norm_stats().items()}
    bf16 = config.torch_dtype == "bfloat16"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            logits = model(batch, norm["lo"], norm["hi"])
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = (losses * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def peak_mib() -> float:
        if device.type == "cpu":
            return _rss_mib()
        return torch.cuda.max_memory_allocated() / 2**20

    num_params = sum(p.numel() for p in model.parameters())
    return step, peak_mib, {"params": num_params, "compile_s": 0.0}


# --------------------------------------------------------------------------- child


def _send(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def serve(framework: str) -> None:
    """Child process: read the settings, set up, warm up, then run one timed step per
    "step" line on stdin."""
    if framework != "torch":
        from msjax import runtime

        runtime.configure()  # as the bin/ commands do, before JAX starts
    config = ml_collections.ConfigDict(json.loads(sys.stdin.readline()))
    if framework == "torch":
        step, peak_mib, facts = setup_torch(config)
    else:
        step, peak_mib, facts = setup_msjax(config, remat=framework == "msjax-remat")
    _reset_peak_rss()
    start = time.perf_counter()
    for _ in range(config.warmup):
        step()
    _send(dict(facts, warmup_s=time.perf_counter() - start))
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        _send({"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu})
    _send({"peak_mib": peak_mib(), "step_peak_mib": _step_peak_rss_mib()})


# --------------------------------------------------------------------------- parent


class Child:
    """One framework's child process, driven over its stdin/stdout."""

    def __init__(self, framework: str, config: ml_collections.ConfigDict, log: IO[str]):
        self.name = framework
        env = dict(os.environ, OMP_NUM_THREADS=str(config.threads))
        env["JAX_PLATFORMS"] = "cuda" if config.platform == "gpu" else "cpu"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # the GPU is shared with torch
        cmd = [sys.executable, os.path.abspath(__file__), f"--child={framework}"]
        # XLA sizes its thread pool from the CPU affinity mask, torch from set_num_threads.
        cores = sorted(os.sched_getaffinity(0))[: config.threads]
        cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
        self.log = log
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        self.proc.stdin.write(config.to_json() + "\n")
        self.proc.stdin.flush()
        self.facts = self.receive()
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def receive(self) -> dict[str, Any]:
        """The child's next JSON line (other output is skipped)."""
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.log.seek(0)
        sys.exit(f"{self.name} child failed:\n{self.log.read()[-4000:]}")

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        timing = self.receive()
        self.wall.append(timing["wall"])
        self.cpu.append(timing["cpu"])

    def finish(self) -> None:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        self.facts.update(self.receive())
        self.proc.wait()

    @property
    def steps_per_s(self) -> float:
        return 1.0 / float(np.median(self.wall))

    def report(self) -> str:
        wall, cpu, facts = np.asarray(self.wall), np.asarray(self.cpu), self.facts
        compile_s = f"compile {facts['compile_s']:.1f} s, " if facts["compile_s"] else ""
        account = ""
        if "account_mib" in facts:
            account = f", compiled account {facts['account_mib']:,.0f} MiB"
        return (
            f"  {self.name:11s} {self.steps_per_s:6.3f} steps/s  (median {np.median(wall):.2f} "
            f"s/step, mean {wall.mean():.2f}, min {wall.min():.2f}, max {wall.max():.2f}; CPU "
            f"{cpu.mean():.2f} s/step)  peak {facts['peak_mib']:,.0f} MiB (steps "
            f"{facts['step_peak_mib']:,.0f}){account}  "
            f"[{compile_s}warm-up {facts['warmup_s']:.1f} s]"
        )


def benchmark(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Runs the frameworks on one workload and batch, alternating their steps, prints them.

    Returns:
        each child's facts (peak_mib, and account_mib for msjax) by name.
    """
    frameworks = ["msjax", "torch"]
    if config.compare_remat and config.mode == "finetune":
        frameworks.insert(1, "msjax-remat")
    remat = f", remat policy {config.ssl.remat_policy}" if "msjax-remat" in frameworks else ""
    print(
        f"{TITLES[config.mode]}: {config.ssl.name if config.mode == 'finetune' else ''} "
        f"batch {config.batch}, {config.platform}, {config.threads} threads, msjax "
        f"{config.compute_dtype}, PyTorch {config.torch_dtype}{remat}, {config.warmup} "
        f"warm-up + {config.steps} timed steps each; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    children = []
    with tempfile.TemporaryDirectory() as logs:
        # Set up one after the other, so that compilation and warm-up do not overlap.
        for name in frameworks:
            log = open(os.path.join(logs, name), "w+")
            children.append(Child(name, config, log))
        for k in range(config.steps):
            for child in children if k % 2 == 0 else children[::-1]:
                child.step()
        for child in children:
            child.finish()
            child.log.close()
    jx, pt = children[0], children[-1]
    print(f"  parameters: msjax {jx.facts['params']:,}  PyTorch {pt.facts['params']:,}")
    assert jx.facts["params"] == pt.facts["params"], "the networks differ in parameter count"
    for child in children:
        print(child.report())
    ratios = ", ".join(
        f"{c.name}/PyTorch {c.steps_per_s / pt.steps_per_s:.2f}x" for c in children[:-1]
    )
    if len(children) == 3:
        ratios += f"; remat step time {np.median(children[1].wall) / np.median(jx.wall):.2f}x"
    print(f"  ratio steps/s: {ratios}  (load average now {os.getloadavg()[0]:.2f})", flush=True)
    return {c.name: c.facts for c in children}


def largest_batches(runs: dict[int, dict[str, dict[str, Any]]], budget_gib: float) -> None:
    """Prints the largest batch fitting in the budget, per framework (method: docstring)."""
    budget = budget_gib * 1024
    batches = sorted(runs)
    print(f"  largest batch in {budget_gib:g} GiB (from batches {batches}):")
    for name in runs[batches[0]]:
        facts = [runs[b][name] for b in batches]
        if "account_mib" in facts[0]:
            account = np.array([f["account_mib"] for f in facts])
            slope = (account[-1] - account[0]) / (batches[-1] - batches[0])
            extra = max(f["step_peak_mib"] - f["account_mib"] for f in facts)
            fixed = account[0] - slope * batches[0] + extra
            how = f"compiled account {slope:,.0f} MiB/segment + {fixed:,.0f} MiB"
        else:
            peak = [f["step_peak_mib"] for f in facts[-2:]]
            slope = (peak[1] - peak[0]) / (batches[-1] - batches[-2])
            fixed = peak[0] - slope * batches[-2]
            how = f"peak RSS {slope:,.0f} MiB/segment + {fixed:,.0f} MiB"
        print(f"    {name:11s} {int((budget - fixed) // slope):5d}  ({how})")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CHILD.value:
        serve(_CHILD.value)
        return
    config = _CONFIG.value
    with config.unlocked():
        config.threads = config.threads or len(os.sched_getaffinity(0))
        config.torch_dtype = config.torch_dtype or config.compute_dtype
    for mode in ("cached", "finetune") if config.mode == "both" else (config.mode,):
        runs = {}
        for batch in config.batches:
            run = config.copy_and_resolve_references()
            with run.unlocked():
                run.mode, run.batch = mode, batch or DEFAULT_BATCH[mode]
            runs[run.batch] = benchmark(run)
        if len(runs) > 1:
            largest_batches(runs, config.memory_budget_gib)


if __name__ == "__main__":
    app.run(main)
