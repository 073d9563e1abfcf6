"""SSL encoders by name: a Hugging Face checkpoint, or random weights of a named size.

`load_encoder("facebook/wav2vec2-base")` or `load_encoder("/path/to/checkpoint")`
loads real weights (msjax.convert.hf); `load_encoder("random:tiny")` builds a
seeded random-init encoder of a preset size (msjax.models.encoder.random_encoder).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from msjax.convert.hf import load_ssl
from msjax.models.encoder import RANDOM_PREFIX, Encoder, random_encoder


def load_configured_encoder(ssl: ml_collections.ConfigDict, seed: int = 0) -> Encoder:
    """The encoder a run config's `ssl` section names, with its fine-tuning settings
    (masking, LayerDrop, frozen conv stack, rematerialisation) when `ssl.finetune`.

    Raises:
      as `load_encoder`.
    """
    encoder = load_encoder(ssl["name"], seed=seed, extract_batch_size=ssl["extract_batch_size"])
    if not ssl["finetune"]:
        return encoder
    encoder = encoder.with_config(
        mask_time_prob=ssl["mask_time_prob"],
        mask_time_length=ssl["mask_time_length"],
        layerdrop=ssl["layerdrop"],
        freeze_feature_encoder=ssl["freeze_feature_encoder"],
    )
    # Configs saved before the field never rematerialise.
    return encoder.with_remat(ssl["remat_policy"] if ssl.get("remat", False) else None)


def load_encoder(name: str, *, seed: int = 0, extract_batch_size: int = 8) -> Encoder:
    """Loads an encoder by hub id, local directory or `random:<preset>`.

    Raises:
      UsageError: an unknown random preset.
      CheckpointError: a checkpoint that is missing, incomplete or mismatched.
    """
    if name.startswith(RANDOM_PREFIX):
        return random_encoder(name, seed=seed, extract_batch_size=extract_batch_size)
    return dataclasses.replace(load_ssl(name), extract_batch_size=extract_batch_size)
