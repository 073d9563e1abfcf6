"""A loaded SSL encoder (`Encoder`) and seeded random ones of a named size.

An `Encoder` is the Flax module with its weights, its identity (the feature cache key)
and `features`, the frozen last hidden state [B, N] -> [B, F, D]. `random_encoder("tiny")`
builds one with random weights: no download, for smoke runs, tests and benchmarks.
Encoders by name (hub id, local directory or random:<preset>): msjax.convert.encoders.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax.errors import UsageError
from msjax.features.cache import params_hash
from msjax.models.ssl import SSLConfig, SSLEncoder

RANDOM_PREFIX = "random:"

# transformers-style config fields per preset; everything else is SSLConfig's
# (wav2vec2-base) default.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ),
    "base": dict(),
    "large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
    ),
}


def normalize_waveform(wav: jax.Array) -> jax.Array:
    """Zero mean, unit variance per segment, as transformers' feature extractor does.

    Args:
        wav: [B, N] waveforms.

    Returns:
        [B, N] float32: (wav - mean) / sqrt(var + 1e-7), statistics over N.
    """
    wav = jnp.asarray(wav, jnp.float32)
    mean = jnp.mean(wav, axis=-1, keepdims=True)
    var = jnp.var(wav, axis=-1, keepdims=True)
    return (wav - mean) / jnp.sqrt(var + 1e-7)


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """A loaded SSL encoder, ready for `module.apply({"params": params}, wav)`.

    Attributes:
      name: what it was loaded from (hub id, directory or random:<preset>).
      module / params / config: the Flax encoder, its float32 weights and its config
        (the checkpoint's plus any overrides).
      normalize: whether waveforms go through `normalize_waveform` first.
      identity: sha256 of what fixes the output for a given waveform (architecture,
        weights, normalisation, compute dtype); stable across runs, a cache key.
      sampling_rate: the rate the checkpoint expects (Hz).
      extract_batch_size: segments per jitted frozen-feature batch.
    """

    name: str
    module: SSLEncoder
    params: Any
    config: SSLConfig
    normalize: bool
    identity: str
    sampling_rate: int = 16000
    extract_batch_size: int = 8

    def last_hidden_state(self, params: Any, wav: jax.Array) -> jax.Array:
        """The frozen features as a pure function of the weights (for use inside a
        larger jitted program). [B, N] -> [B, F, D]"""
        if self.normalize:
            wav = normalize_waveform(wav)
        return self.module.apply({"params": params}, wav)["last_hidden_state"]

    @functools.cached_property
    def _forward(self):
        return jax.jit(self.last_hidden_state)

    def features(self, wav: np.ndarray) -> jax.Array:
        """Frozen last hidden state. [B, N] -> [B, F, D]"""
        return self._forward(self.params, jnp.asarray(wav, jnp.float32))

    def with_config(self, **changes: Any) -> Encoder:
        """The same weights under changed fine-tuning settings (masking, LayerDrop, ...)."""
        config = dataclasses.replace(self.config, **changes)
        return dataclasses.replace(self, config=config, module=self.module.clone(config=config))

    def with_remat(self, policy: str | None) -> Encoder:
        """The same encoder rematerialising its transformer layers when differentiated.

        Args:
            policy: one of msjax.models.ssl.REMAT_POLICIES, or None for no remat.
        """
        return dataclasses.replace(self, module=self.module.clone(remat_policy=policy))


def random_encoder(name: str, *, seed: int = 0, extract_batch_size: int = 8) -> Encoder:
    """The seeded random-init encoder `random:<preset>` names.

    Raises:
      UsageError: an unknown preset.
    """
    preset = name[len(RANDOM_PREFIX):]
    if preset not in PRESETS:
        raise UsageError(
            f"--ssl={name}: unknown preset; choose one of "
            + ", ".join(RANDOM_PREFIX + p for p in PRESETS)
        )
    config = SSLConfig(**PRESETS[preset])
    module = SSLEncoder(config)
    wav = jnp.zeros((1, config.receptive_field), jnp.float32)
    params = jax.jit(module.init)(jax.random.key(seed), wav)["params"]
    blob = json.dumps(dataclasses.asdict(config), sort_keys=True)
    identity = hashlib.sha256(f"{blob}:{params_hash(params)}".encode()).hexdigest()
    return Encoder(
        name, module, params, config, normalize=True, identity=identity,
        extract_batch_size=extract_batch_size,
    )
