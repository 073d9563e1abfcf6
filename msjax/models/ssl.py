"""wav2vec2 / HuBERT speech encoder in Flax linen.

One module covers both model families in both sizes:

- Base: a convolutional feature extractor whose first layer has a GroupNorm with one
  group per channel, and a post-LN transformer (LayerNorm after each residual block).
- Large ("stable layer norm"): a LayerNorm after every convolution, a pre-LN transformer
  and a final LayerNorm after the last layer.

`feat_extract_norm` and `do_stable_layer_norm` are read independently, so mixed
checkpoints (wav2vec2-large-960h: group norm with a post-LN stack) work too.

Submodules are named after the attributes of the transformers PyTorch model
(`feature_extractor/conv_layers/0/conv`, `encoder/layers/3/attention/q_proj`, ...), so
that converting a checkpoint only renames leaves (`weight` -> `kernel`/`scale`).

Fine-tuning follows transformers' training behaviour: time (and optionally feature)
masking with a learned `masked_spec_embed`, LayerDrop, and the configured dropouts, all
active only with `train=True`. Dropout and LayerDrop draw from the 'dropout' rng stream;
masking draws from the 'mask' stream when one is given, else from 'dropout'.

`SSLEncoder(remat_policy=...)` rematerialises each transformer layer in the backward
pass (jax.checkpoint under a named `jax.checkpoint_policies` policy): activation memory
for compute, with the same parameter tree and the same gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msjax.models.products import dot_general
from msjax.models.vjp import grouped_conv_1d

Dtype = Any


def _gelu(x: jax.Array) -> jax.Array:
    """Exact GELU written with erf, as PyTorch computes it, in float32 whatever x's dtype.

    jax.nn.gelu(approximate=False) goes through erfc, which XLA expands into a slower
    two-branch approximation; this form is cheaper and matches PyTorch's formula. XLA's
    CPU erf is far slower in bfloat16 than in float32, forward and backward.
    """
    y = x.astype(jnp.float32)
    return (0.5 * y * (1.0 + jax.lax.erf(y * np.float32(np.sqrt(0.5))))).astype(x.dtype)


# transformers' ACT2FN names; its "gelu" is the exact (erf) GELU.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, dot_general=dot_general, name=name)


# jax.checkpoint_policies a rematerialised layer may use: what each keeps from its forward.
REMAT_POLICIES = (
    "nothing_saveable",  # only the layer's input; the whole layer reruns in the backward
    "dots_with_no_batch_dims_saveable",  # also the projections' and feed-forward's outputs
    "dots_saveable",  # also the attention logits and weighted values
)

# PyTorch's LayerNorm/GroupNorm default eps, used by the conv feature extractor.
_CONV_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """Architecture and fine-tuning settings of a wav2vec2/HuBERT encoder.

    Field names and defaults follow transformers' `Wav2Vec2Config` (wav2vec2-base), so
    `from_hf_config` is a plain field copy. `freeze_feature_encoder` is the only field
    that has no counterpart in a checkpoint's config.json.
    """

    model_type: str = "wav2vec2"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    feat_proj_layer_norm: bool = True
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.1
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    freeze_feature_encoder: bool = False

    def __post_init__(self):
        if self.model_type not in ("wav2vec2", "hubert"):
            raise ValueError(f"model_type {self.model_type!r} is not wav2vec2 or hubert")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm {self.feat_extract_norm!r} is not group or layer")
        for act in (self.hidden_act, self.feat_extract_activation):
            if act not in _ACTIVATIONS:
                raise ValueError(f"activation {act!r} is not one of {sorted(_ACTIVATIONS)}")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride differ in length")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size is not a multiple of num_attention_heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError("hidden_size is not a multiple of num_conv_pos_embedding_groups")

    @classmethod
    def from_hf_config(cls, hf_config: Mapping[str, Any], **overrides: Any) -> SSLConfig:
        """Builds the config from a transformers config.json dict.

        Args:
            hf_config: the parsed config.json of a wav2vec2 or HuBERT checkpoint.
            **overrides: fields to set after reading it (e.g. `layerdrop=0.0`).

        Raises:
            ValueError: for an unknown model type or a feature the encoder does not
                implement (adapters, HuBERT's batch-norm positional convolution).
        """
        if hf_config.get("add_adapter") or hf_config.get("adapter_attn_dim") is not None:
            raise ValueError("adapter layers (add_adapter/adapter_attn_dim) are not supported")
        if hf_config.get("conv_pos_batch_norm"):
            raise ValueError("conv_pos_batch_norm is not supported")
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name in hf_config:
                value = hf_config[field.name]
                kwargs[field.name] = tuple(value) if isinstance(value, list) else value
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for the standard conv stack)."""
        n = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            n = (n - 1) * stride + kernel
        return n

    @property
    def uses_masked_spec_embed(self) -> bool:
        """Whether the encoder has a `masked_spec_embed` vector (as transformers decides)."""
        return self.mask_time_prob > 0 or self.mask_feature_prob > 0

    def num_frames(self, n_samples: int) -> int:
        """Frames the encoder outputs for `n_samples` input samples.

        Inputs shorter than the receptive field are zero-padded to it, so the
        result is at least 1.
        """
        n = max(int(n_samples), self.receptive_field)
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            n = (n - kernel) // stride + 1
        return n


def _span_mask(
    rng: jax.Array, batch: int, length: int, prob: float, span: int, min_spans: int
) -> jax.Array:
    """Random spans to mask, as transformers' `_compute_mask_indices` draws them.

    The number of spans is int(prob * length / span + u), u ~ U[0, 1) shared by the
    batch, at least `min_spans` and capped so the spans fit; the span starts are drawn
    without replacement per row. With static shapes the spans are drawn for the largest
    possible count and the surplus ones are switched off.

    Returns:
        bool [batch, length]; all False when `span > length` (transformers raises).
    """
    if span > length:
        return jnp.zeros((batch, length), bool)

    def clamp(n, xp):  # xp: numpy for the static bound, jax.numpy for the drawn count
        n = xp.maximum(n, min_spans)
        n = xp.where(n * span > length, length // span, n)
        return xp.minimum(n, length - span + 1)

    num_starts = length - span + 1
    max_spans = int(clamp(math.floor(prob * length / span) + 1, np))
    count_rng, start_rng = jax.random.split(rng)
    eps = jax.random.uniform(count_rng)
    count = clamp(jnp.floor(prob * length / span + eps).astype(jnp.int32), jnp)
    # The top-k of i.i.d. uniforms is a uniformly random subset, in random order.
    _, starts = jax.lax.top_k(jax.random.uniform(start_rng, (batch, num_starts)), max_spans)
    active = jnp.arange(max_spans) < count  # [S]
    t = jnp.arange(length)
    inside = (t >= starts[..., None]) & (t < starts[..., None] + span)  # [B, S, T]
    return jnp.any(inside & active[:, None], axis=1)


def _layer_norm(name: str, eps: float, dtype: Dtype) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it; the fast E[x^2] - E[x]^2 form loses digits.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


class _ConvLayer(nn.Module):
    """One conv of the feature extractor: conv, optional LayerNorm, activation. [B, T, C]."""

    config: SSLConfig
    layer_id: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = nn.Conv(
            cfg.conv_dim[self.layer_id],
            kernel_size=(cfg.conv_kernel[self.layer_id],),
            strides=(cfg.conv_stride[self.layer_id],),
            padding="VALID",
            use_bias=cfg.conv_bias,
            dtype=self.dtype,
            kernel_init=nn.initializers.he_normal(),
            name="conv",
        )(x)
        if cfg.feat_extract_norm == "layer":
            x = _layer_norm("layer_norm", _CONV_NORM_EPS, self.dtype)(x)
        return _ACTIVATIONS[cfg.feat_extract_activation](x)


class _ConvWeights(nn.Module):
    """The parameters of an nn.Conv (same names, shapes and initialisers), unapplied."""

    kernel_shape: tuple[int, ...]
    use_bias: bool

    @nn.compact
    def __call__(self) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.he_normal(), self.kernel_shape)
        if self.use_bias:
            # A per-channel constant; the GroupNorm that follows removes it again.
            self.param("bias", nn.initializers.zeros, self.kernel_shape[-1:])
        return kernel


class _NormWeights(nn.Module):
    """The parameters of a norm layer: `scale` (ones) and `bias` (zeros), [features]."""

    features: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        return scale, self.param("bias", nn.initializers.zeros, (self.features,))


class _GroupNormConvLayer(nn.Module):
    """First conv of a Base extractor: conv, GroupNorm with one group per channel, activation.

    The conv is a product of the waveform's sliding windows (K taps, e.g. 10) with the
    kernel, so each channel's mean and variance over time follow from the windows' mean [K]
    and covariance [K, K] without computing the conv output first. The normalisation then
    folds into a per-utterance kernel, and the layer writes its [B, T, C] output in a
    single pass instead of the three (conv, statistics, normalise) of the plain form.
    [B, N, 1] -> [B, T, C].
    """

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        size, stride, channels = cfg.conv_kernel[0], cfg.conv_stride[0], cfg.conv_dim[0]
        kernel = _ConvWeights((size, 1, channels), cfg.conv_bias, name="conv")()[:, 0, :]
        scale, bias = _NormWeights(channels, name="layer_norm")()
        # Whatever the compute dtype, the layer runs in float32 (it is memory-bound: the
        # arithmetic is cheap) and only its output is cast.
        windows = _sliding_windows(x[..., 0].astype(jnp.float32), size, stride)  # [B, T, K]
        centred = windows - jnp.mean(windows, axis=1, keepdims=True)
        highest = jax.lax.Precision.HIGHEST
        cov = jnp.einsum("btk,btl->bkl", centred, centred, precision=highest)
        cov = cov / windows.shape[1]
        var = jnp.einsum("bkl,kc,lc->bc", cov, kernel, kernel, precision=highest)
        gain = scale * jax.lax.rsqrt(jnp.maximum(var, 0.0) + _CONV_NORM_EPS)  # [B, C]
        folded = kernel * gain[:, None, :]  # [B, K, C]
        # A K-term sum of broadcasts rather than a matmul with K = 10: XLA fuses it with the
        # bias and activation into one pass that writes the [B, T, C] output once.
        y = bias
        for k in range(size):
            y = y + centred[:, :, k, None] * folded[:, None, k, :]
        return _ACTIVATIONS[cfg.feat_extract_activation](y).astype(self.dtype)


def _sliding_windows(wav: jax.Array, size: int, stride: int) -> jax.Array:
    """Frames of a waveform. [B, N] -> [B, T, size], T = (N - size) // stride + 1."""
    frames = (wav.shape[-1] - size) // stride + 1
    end = (frames - 1) * stride + 1
    taps = [jax.lax.slice_in_dim(wav, k, k + end, stride, axis=1) for k in range(size)]
    return jnp.stack(taps, axis=-1)


class _ConvStack(nn.Module):
    """The conv layers, named "0", "1", ... like a PyTorch ModuleList."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        for i in range(len(cfg.conv_dim)):
            if i == 0 and cfg.feat_extract_norm == "group":
                x = _GroupNormConvLayer(cfg, self.dtype, name="0")(x)
            else:
                x = _ConvLayer(cfg, i, self.dtype, name=str(i))(x)
        return x


class _FeatureEncoder(nn.Module):
    """Waveform [B, N, 1] -> conv features [B, T, conv_dim[-1]]."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _ConvStack(self.config, self.dtype, name="conv_layers")(x)


class _FeatureProjection(nn.Module):
    """LayerNorm (optional for HuBERT), Linear to hidden_size, dropout."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        if cfg.feat_proj_layer_norm:
            x = _layer_norm("layer_norm", cfg.layer_norm_eps, self.dtype)(x)
        x = _dense(cfg.hidden_size, self.dtype, "projection")(x)
        return nn.Dropout(cfg.feat_proj_dropout)(x, deterministic=not train)


class _WeightNormConv(nn.Module):
    """Weight-normed grouped "same" convolution over time. [B, T, D] -> [B, T, D].

    The weight is g * v / ||v||, with the norm taken per kernel tap (PyTorch's
    weight_norm dim=2 over the [O, I, K] weight). Parameters are stored in Flax conv
    layout: `weight_v` [K, I/groups, O], `weight_g` [K, 1, 1].
    """

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kernel, groups = cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
        dim = x.shape[-1]
        std = 2 * math.sqrt(1 / (kernel * dim))
        v = self.param("weight_v", nn.initializers.normal(std), (kernel, dim // groups, dim))
        g = self.param("weight_g", lambda _, shape: _tap_norm(v), (kernel, 1, 1))
        bias = self.param("bias", nn.initializers.zeros, (dim,))
        w = (g * v / _tap_norm(v)).astype(self.dtype)
        # Padding K//2 on both sides then dropping the last frame for even K (transformers'
        # SamePad) is the same as padding one frame less on the right.
        pad = (kernel // 2, kernel // 2 - (1 - kernel % 2))
        y = grouped_conv_1d(x.astype(self.dtype), w, pad, groups)
        return y + bias.astype(self.dtype)


class _PosConvEmbed(nn.Module):
    """Convolutional relative position signal: weight-normed conv, then activation."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _WeightNormConv(self.config, self.dtype, name="conv")(x)
        return _ACTIVATIONS[self.config.feat_extract_activation](y)


def _tap_norm(v: jax.Array) -> jax.Array:
    """L2 norm of a [K, I, O] weight per kernel tap -> [K, 1, 1]."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))


class _Attention(nn.Module):
    """Multi-head self-attention without a mask. [B, T, D] -> [B, T, D]."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        batch, length, dim = x.shape
        heads = cfg.num_attention_heads
        head_dim = dim // heads

        def proj(name):
            y = _dense(dim, self.dtype, name)(x)
            return y.reshape(batch, length, heads, head_dim)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        f32 = jnp.float32
        logits = jnp.einsum(
            "bqhd,bkhd->bhqk", q * head_dim**-0.5, k, preferred_element_type=f32,
            _dot_general=dot_general,
        )
        # Softmax with the division moved after the value product: it then scales the
        # [B, H, T, head_dim] output instead of the [B, H, T, T] weights, and XLA keeps the
        # exponentials in one fused loop (about 4x faster on CPU at T = 149).
        weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
        inverse_sum = 1.0 / jnp.sum(weights, axis=-1, keepdims=True)  # [B, H, T, 1]
        # Dropping weights before normalising equals dropping probabilities after it.
        weights = nn.Dropout(cfg.attention_dropout)(weights, deterministic=not train)
        weights = weights.astype(self.dtype)
        out = jnp.einsum(
            "bhqk,bkhd->bhqd", weights, v, preferred_element_type=f32, _dot_general=dot_general
        )
        out = (out * inverse_sum).astype(self.dtype)
        out = jnp.transpose(out, (0, 2, 1, 3)).reshape(batch, length, dim)
        return _dense(dim, self.dtype, "out_proj")(out)


class _FeedForward(nn.Module):
    """Linear, activation, dropout, Linear, dropout."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        x = _dense(cfg.intermediate_size, self.dtype, "intermediate_dense")(x)
        x = _ACTIVATIONS[cfg.hidden_act](x)
        x = nn.Dropout(cfg.activation_dropout)(x, deterministic=not train)
        x = _dense(cfg.hidden_size, self.dtype, "output_dense")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)


class _EncoderLayer(nn.Module):
    """One transformer block, post-LN (Base) or pre-LN (stable layer norm, Large)."""

    config: SSLConfig
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        attention = _Attention(cfg, self.dtype, name="attention")
        dropout = nn.Dropout(cfg.hidden_dropout)
        norm = _layer_norm("layer_norm", cfg.layer_norm_eps, self.dtype)
        feed_forward = _FeedForward(cfg, self.dtype, name="feed_forward")
        final_norm = _layer_norm("final_layer_norm", cfg.layer_norm_eps, self.dtype)
        if cfg.do_stable_layer_norm:
            x = x + dropout(attention(norm(x), train), deterministic=not train)
            return x + feed_forward(final_norm(x), train)
        x = norm(x + dropout(attention(x, train), deterministic=not train))
        return final_norm(x + feed_forward(x, train))


class _LayerStack(nn.Module):
    """The transformer layers ("0", "1", ...) with LayerDrop at train time.

    Returns the output and the hidden states: the input of layer 0 followed by the
    output of every layer. A layer that LayerDrop skips passes its input through, so
    the tuple always has num_hidden_layers + 1 entries. With a `remat_policy` each
    layer is rematerialised (nn.remat keeps the module's name, so the parameter tree
    is unchanged, and replays its dropout rngs, so the gradients are too).
    """

    config: SSLConfig
    dtype: Dtype
    remat_policy: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        cfg = self.config
        layer_cls = _EncoderLayer
        if self.remat_policy is not None:
            policy = getattr(jax.checkpoint_policies, self.remat_policy)
            # `train` (argument 2, counting the module) selects Python branches: static.
            layer_cls = nn.remat(_EncoderLayer, policy=policy, static_argnums=(2,))
        states = [x]
        for i in range(cfg.num_hidden_layers):
            layer = layer_cls(cfg, self.dtype, name=str(i))
            if train and cfg.layerdrop > 0:
                keep = jax.random.uniform(self.make_rng("dropout")) >= cfg.layerdrop
                x = nn.cond(keep, lambda mdl, h: mdl(h, True), lambda mdl, h: h, layer, x)
            else:
                x = layer(x, train)
            states.append(x)
        return x, tuple(states)


class _Encoder(nn.Module):
    """Positional conv embedding, the transformer stack and its LayerNorm."""

    config: SSLConfig
    dtype: Dtype
    remat_policy: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        cfg = self.config
        x = x + _PosConvEmbed(cfg, self.dtype, name="pos_conv_embed")(x)
        norm = _layer_norm("layer_norm", cfg.layer_norm_eps, self.dtype)
        if not cfg.do_stable_layer_norm:
            x = norm(x)
        x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=not train)
        x, states = _LayerStack(cfg, self.dtype, self.remat_policy, name="layers")(x, train)
        if cfg.do_stable_layer_norm:
            x = norm(x)
        return x, states


class SSLEncoder(nn.Module):
    """wav2vec2 / HuBERT encoder: raw 16 kHz waveform -> contextual frame features.

    Attributes:
        config: the architecture and fine-tuning settings.
        dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
        remat_policy: None, or one of REMAT_POLICIES to rematerialise the transformer
            layers in the backward pass (less activation memory, more compute).
    """

    config: SSLConfig
    dtype: Dtype = jnp.float32
    remat_policy: str | None = None

    def __post_init__(self):
        if self.remat_policy is not None and self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy {self.remat_policy!r} is not one of {', '.join(REMAT_POLICIES)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, wav: jax.Array, *, train: bool = False, output_hidden_states: bool = False
    ) -> dict[str, Any]:
        """Encodes a batch of fixed-length waveforms.

        Args:
            wav: [B, N] waveform (already normalised if the checkpoint expects it). Inputs
                shorter than `config.receptive_field` are zero-padded to it.
            train: enables dropout, LayerDrop and masking (needs a 'dropout' rng, and
                optionally a separate 'mask' rng for the masking).
            output_hidden_states: also return the input of the first transformer layer
                and the output of every layer.

        Returns:
            dict with `last_hidden_state` [B, T, D], T = config.num_frames(N), and
            `hidden_states`: a tuple of num_hidden_layers + 1 arrays [B, T, D], or None.
        """
        cfg = self.config
        short = cfg.receptive_field - wav.shape[-1]
        if short > 0:
            wav = jnp.pad(wav, ((0, 0), (0, short)))
        x = _FeatureEncoder(cfg, self.dtype, name="feature_extractor")(
            wav.astype(self.dtype)[..., None]
        )
        if cfg.freeze_feature_encoder:
            x = jax.lax.stop_gradient(x)
        x = _FeatureProjection(cfg, self.dtype, name="feature_projection")(x, train)
        if cfg.uses_masked_spec_embed:
            embed = self.param(
                "masked_spec_embed", nn.initializers.uniform(1.0), (cfg.hidden_size,)
            )
            if train and cfg.apply_spec_augment:
                x = self._mask(x, embed)
        x, states = _Encoder(cfg, self.dtype, self.remat_policy, name="encoder")(x, train)
        return {"last_hidden_state": x, "hidden_states": states if output_hidden_states else None}

    def _mask(self, x: jax.Array, embed: jax.Array) -> jax.Array:
        """SpecAugment-style masking of [B, T, D] features (train time only)."""
        cfg = self.config
        batch, length, dim = x.shape
        rng = self.make_rng("mask" if self.has_rng("mask") else "dropout")
        time_rng, feature_rng = jax.random.split(rng)
        if cfg.mask_time_prob > 0:
            mask = _span_mask(
                time_rng, batch, length, cfg.mask_time_prob, cfg.mask_time_length,
                cfg.mask_time_min_masks,
            )
            x = jnp.where(mask[..., None], embed.astype(x.dtype), x)
        if cfg.mask_feature_prob > 0:
            mask = _span_mask(
                feature_rng, batch, dim, cfg.mask_feature_prob, cfg.mask_feature_length,
                cfg.mask_feature_min_masks,
            )
            x = jnp.where(mask[:, None, :], jnp.zeros((), x.dtype), x)
        return x
