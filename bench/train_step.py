"""Benchmark: one MS-EmoBoost training step over cached SSL features, msjax against PyTorch.

A step is forward + backward + Adam update of the full model (both branches, attention,
enhancement, classifier) on one batch: mfcc [B, 300, 40], image [B, 256, 384, 3],
ssl [B, 149, 768], C = 7, batch 32 by default.

  msjax:   msjax.models.MSEmoBoost, the step jitted with the state donated.
  PyTorch: the same network written below with torch.nn (torchvision AlexNet features,
           nn.LSTM, the same attention and linear layers), eager mode, torch.optim.Adam.

Each framework runs in its own child process (clean peak-memory figures) with the same
number of threads; warm-up steps (compilation, allocator) are not timed, then the mean
of --repeats timed steps is reported. Peak memory is the child's maximum resident set
size (whole process: weights, optimizer state, activations, runtime).

    python bench/train_step.py [--batch-size 32] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CLASSES, SSL_FRAMES, SSL_DIM, MFCC_FRAMES, N_MFCC, IMAGE = 7, 149, 768, 300, 40, (256, 384)


def _inputs(batch_size: int, seed: int = 0):
    """Random inputs as NumPy arrays (NHWC image), shared by both frameworks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "mfcc": rng.standard_normal((batch_size, MFCC_FRAMES, N_MFCC), np.float32),
        "image": rng.standard_normal((batch_size, *IMAGE, 3), np.float32),
        "ssl": rng.standard_normal((batch_size, SSL_FRAMES, SSL_DIM), np.float32),
        "label": rng.integers(0, CLASSES, batch_size),
    }


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(step, warmup: int, repeats: int) -> float:
    """Seconds per step (mean over `repeats`, after `warmup` untimed steps)."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def run_msjax(args: argparse.Namespace) -> dict:
    """Times the jitted msjax train step."""
    import jax
    import jax.numpy as jnp
    import optax

    from msjax.models import MSEmoBoost

    data = _inputs(args.batch_size)
    labels = jnp.asarray(data.pop("label"))
    batch = {k: jnp.asarray(v) for k, v in data.items()}
    model = MSEmoBoost(CLASSES, SSL_FRAMES, SSL_DIM, lstm_unroll=args.unroll)
    tx = optax.adam(1e-5)

    @jax.jit
    def init(rng):
        params = model.init(rng, jax.tree.map(lambda x: x[:1], batch), train=False)["params"]
        return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

    def train_step(state, batch, labels, rng):
        def loss_fn(params):
            rngs = {"dropout": jax.random.fold_in(rng, state["step"])}
            logits = model.apply({"params": params}, batch, train=True, rngs=rngs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    step_fn = jax.jit(train_step, donate_argnums=(0,))
    state = init(jax.random.key(0))
    count = sum(x.size for x in jax.tree.leaves(state["params"]))
    rng = jax.random.key(1)
    holder = {"state": state}

    def step():
        holder["state"], loss = step_fn(holder["state"], batch, labels, rng)
        loss.block_until_ready()

    seconds = _time_steps(step, args.warmup, args.repeats)
    return {"params": count, "seconds": seconds, "peak_mib": _peak_mib()}


def _torch_model():
    """The same network in PyTorch (CM's layer choices plus the paper's attention)."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))

        def forward(self, x):
            scores = self.query(x) @ self.key(x).transpose(1, 2) / x.shape[-1] ** 0.5
            return x + torch.softmax(scores, dim=-1) @ self.value(x)

    class TorchEmoBoost(nn.Module):
        def __init__(self):
            super().__init__()
            self.alexnet = torchvision.models.alexnet(weights=None).features
            self.pool = nn.AdaptiveAvgPool2d((6, 6))
            self.spec_attention = Attention(256)
            self.spec_linear = nn.Linear(9216, 128)
            self.lstm = nn.LSTM(N_MFCC, 256, 2, batch_first=True, bidirectional=True, dropout=0.5)
            self.mfcc_attention = Attention(512)
            self.mfcc_linear = nn.Linear(MFCC_FRAMES * 512, 128)
            self.enhance = nn.Linear(256, SSL_FRAMES)
            self.classifier = nn.Linear(SSL_DIM, CLASSES)
            self.dropout = nn.Dropout(0.1)

        def forward(self, mfcc, image, ssl):
            spec = self.pool(self.alexnet(image))  # [B, 256, 6, 6]
            tokens = self.spec_attention(spec.flatten(2).transpose(1, 2))  # [B, 36, 256]
            spec = F.relu(self.spec_linear(self.dropout(tokens.transpose(1, 2).flatten(1))))
            seq, _ = self.lstm(F.normalize(mfcc, p=2, dim=2))
            seq = self.mfcc_attention(seq)
            mfcc = F.relu(self.mfcc_linear(self.dropout(seq.flatten(1))))
            weights = F.relu(self.enhance(self.dropout(torch.cat([spec, mfcc], dim=-1))))
            pooled = torch.bmm(weights.unsqueeze(1), ssl).squeeze(1)  # [B, D]
            return self.classifier(self.dropout(pooled))

    return TorchEmoBoost()


def run_torch(args: argparse.Namespace) -> dict:
    """Times the eager PyTorch train step."""
    import torch

    torch.manual_seed(0)
    data = _inputs(args.batch_size)
    mfcc = torch.from_numpy(data["mfcc"])
    image = torch.from_numpy(data["image"].transpose(0, 3, 1, 2).copy())  # NCHW
    ssl = torch.from_numpy(data["ssl"])
    labels = torch.from_numpy(data["label"])
    model = _torch_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    count = sum(p.numel() for p in model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(mfcc, image, ssl), labels)
        loss.backward()
        opt.step()

    seconds = _time_steps(step, args.warmup, args.repeats)
    return {"params": count, "seconds": seconds, "peak_mib": _peak_mib()}


def _child(framework: str, args: argparse.Namespace) -> dict:
    """Runs one framework in a fresh process limited to `args.threads` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [
        sys.executable, __file__, f"--framework={framework}", f"--batch-size={args.batch_size}",
        f"--warmup={args.warmup}", f"--repeats={args.repeats}", f"--threads={args.threads}",
        f"--unroll={args.unroll}",
    ]
    # Same cores for both: XLA sizes its thread pool from the CPU affinity mask.
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[: args.threads]
        cmd = ["taskset", "-c", ",".join(map(str, cores)), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{framework} benchmark failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--unroll", type=int, default=1, help="msjax Bi-LSTM scan unrolling")
    parser.add_argument("--framework", choices=("msjax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.framework == "msjax":
        print(json.dumps(run_msjax(args)))
        return
    if args.framework == "torch":
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_torch(args)))
        return

    print(
        f"MS-EmoBoost train step (fwd+bwd+Adam), batch {args.batch_size}, mfcc "
        f"[{MFCC_FRAMES},{N_MFCC}], image {list(IMAGE)}, ssl [{SSL_FRAMES},{SSL_DIM}], "
        f"C={CLASSES}, {args.threads} threads, {args.warmup} warm-up + {args.repeats} timed"
    )
    jx, pt = _child("msjax", args), _child("torch", args)
    print(f"parameters: msjax {jx['params']:,}  PyTorch {pt['params']:,} "
          f"(PyTorch's LSTM keeps b_ih and b_hh apart: +{pt['params'] - jx['params']:,})")
    for name, r in (("msjax", jx), ("PyTorch", pt)):
        print(f"{name:8s} {1 / r['seconds']:.3f} steps/s  ({r['seconds']:.2f} s/step)  "
              f"peak RSS {r['peak_mib']:.0f} MiB")
    print(f"ratio msjax/PyTorch: {pt['seconds'] / jx['seconds']:.2f}x")


if __name__ == "__main__":
    main()
