"""The inference path: from stored features to utterance probabilities.

Training's evaluation (msjax.train.steps and loop), prediction (msjax.inference.predict), the
t-SNE pictures and the benchmarks all go through these functions, so a checkpoint
predicts exactly as it was validated:

    batch {mfcc [B, 300, 40], spec [B, 200, 300], ssl [B, F, D] or wav [B, N]}
      -> model_inputs  {mfcc, image [B, H, W, 3], ssl or (normalised) wav}
      -> log_probs     segment log-softmax [B, C]
      -> utterance_predictions  mean over each utterance's segments [U, C]
      -> probabilities          renormalised into a distribution [U, C]

Submodules: `predict` (a checkpoint over audio files, bin/predict) and `timeline`
(per-segment rows and plots of a recording).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msjax.experiment.config import ModelConfig
from msjax.features.acoustic import FeatureConfig
from msjax.features.image import spec_to_image
from msjax.models.emoboost import MSEmoBoost, from_configs
from msjax.models.encoder import Encoder, normalize_waveform
from msjax.results.metrics import log_softmax

Batch = dict[str, jax.Array]


# MSEmoBoost's attributes, which the model config's fields of the same names set.
_MODULE_FIELDS = frozenset(f.name for f in dataclasses.fields(MSEmoBoost))


def build_model(
    model_cfg: ModelConfig | Mapping[str, Any],
    num_classes: int,
    feature_cfg: FeatureConfig,
    encoder: Encoder,
    finetune: bool,
) -> MSEmoBoost:
    """MS-EmoBoost as a config (or a checkpoint's "model" metadata) describes it, with
    frame count and width derived from the encoder's config; the encoder runs inside the
    model only when it is fine-tuned.

    The config's fields that MSEmoBoost has are passed by name; the others choose its
    initial weights (msjax.train.setup). Raises KeyError: metadata lacking a field.
    """
    model = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    return from_configs(
        num_classes, feature_cfg, encoder.config,
        **{name: value for name, value in model.items() if name in _MODULE_FIELDS},
        encoder=encoder.module if finetune else None,
    )


def wav_normalizer(encoder: Encoder, finetune: bool) -> Callable | None:
    """The normalisation raw segments get before the model, or None.

    Only a fine-tuned encoder reads raw segments inside the model; frozen features
    were normalised when they were extracted (`Encoder.features`).
    """
    return normalize_waveform if finetune and encoder.normalize else None


def model_inputs(
    batch: Batch, norm: dict, image_size: tuple[int, int], normalize_wav: Callable | None
) -> Batch:
    """Turns a stored batch into the model's inputs (image transform on device).

    Args:
      batch: mfcc [B, 300, 40], spec [B, 200, 300], ssl [B, F, D] or wav [B, N].
      norm: training-fold spectrogram statistics {"lo", "hi"}, each [200].
      image_size: (height, width) of the AlexNet image.
      normalize_wav: from `wav_normalizer`.
    """
    inputs = {"mfcc": batch["mfcc"]}
    inputs["image"] = spec_to_image(batch["spec"], norm["lo"], norm["hi"], size=image_size)
    if "ssl" in batch:
        inputs["ssl"] = batch["ssl"]
    if "wav" in batch:
        inputs["wav"] = normalize_wav(batch["wav"]) if normalize_wav else batch["wav"]
    return inputs


def cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    """`tree` with its floating-point leaves cast to `dtype` (others unchanged)."""

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def with_compute_dtype(model: MSEmoBoost, dtype: jnp.dtype) -> MSEmoBoost:
    """The model with the encoder it runs inside (if any) computing in `dtype`.

    The encoder computes in its module's dtype whatever its params are cast to: a
    float32 module would cast bf16 params back up in every dense layer.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or encoder.dtype == dtype:
        return model
    return model.clone(encoder=encoder.clone(dtype=dtype))


def forward(
    model: MSEmoBoost,
    params: Any,
    batch: Batch,
    norm: dict,
    *,
    image_size: tuple[int, int],
    normalize_wav: Callable | None = None,
    compute_dtype: jnp.dtype = jnp.float32,
    train: bool = False,
    rng: jax.Array | None = None,
    return_features: bool = False,
) -> Any:
    """The model on a stored batch: float32 logits [B, C].

    With `compute_dtype` bfloat16, params and inputs are cast inside (mixed
    precision). `rng` is the dropout key when training. With `return_features`,
    (logits, the model's pooled feature dict), as `MSEmoBoost.__call__` returns them.
    """
    inputs = model_inputs(batch, norm, image_size, normalize_wav)
    if compute_dtype != jnp.float32:
        params, inputs = cast_floats(params, compute_dtype), cast_floats(inputs, compute_dtype)
    rngs = {"dropout": rng} if train else {}
    out = model.apply(
        {"params": params}, inputs, train=train, rngs=rngs, return_features=return_features
    )
    if return_features:
        return out[0].astype(jnp.float32), out[1]
    return out.astype(jnp.float32)


def log_probs(model: MSEmoBoost, params: Any, batch: Batch, norm: dict, **kwargs: Any) -> jax.Array:
    """Segment log-probabilities [B, C] (eval mode; `kwargs` as `forward` takes them)."""
    return jax.nn.log_softmax(forward(model, params, batch, norm, train=False, **kwargs))


def utterance_predictions(
    segment_logprobs: np.ndarray, utterance_ids: Sequence[str] | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Averages segment log-probabilities into one row per utterance.

    Args:
        segment_logprobs: [S, C] log-softmax of each segment's logits.
        utterance_ids: [S] the utterance each segment was cut from (str or int).
            An utterance's segments need not be contiguous.

    Returns:
        (utt_ids [U], mean_logprobs [U, C]): utterances in order of first
        appearance, each with the mean of its segments' log-probabilities. The
        predicted class is `mean_logprobs.argmax(-1)`.
    """
    logprobs = np.asarray(segment_logprobs, dtype=np.float64)
    ids = np.asarray(utterance_ids)
    if logprobs.ndim != 2 or ids.shape != (logprobs.shape[0],):
        raise ValueError(
            f"expected segment_logprobs [S, C] and utterance_ids [S], got "
            f"{logprobs.shape} and {ids.shape}"
        )
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    # np.unique sorts; renumber the utterances by where each first appears.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    slot = rank[inverse.reshape(-1)]
    sums = np.zeros((unique.size, logprobs.shape[1]))
    np.add.at(sums, slot, logprobs)
    counts = np.bincount(slot, minlength=unique.size)
    return unique[order], sums / counts[:, None]


def probabilities(mean_logprobs: np.ndarray) -> np.ndarray:
    """Mean segment log-probabilities renormalised into a distribution. [..., C] -> [..., C]

    A mean of log-softmax rows is no longer normalised; this is what prediction
    files and `bin/predict` report.
    """
    return np.exp(log_softmax(mean_logprobs, axis=-1))
