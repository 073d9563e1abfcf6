"""The pieces of a run that follow from its config: params, shardings, metadata.

(The model itself is `msjax.inference.build_model`: prediction builds it too.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import msjax
from msjax.convert.download import alexnet_weights_file
from msjax.convert.torchvision import load_alexnet_params
from msjax.data.folds import Fold
from msjax.data.records import Dataset
from msjax.experiment.config import ExperimentConfig
from msjax.features.acoustic import FeatureConfig
from msjax.io.rundir import RunDir
from msjax.models.emoboost import MSEmoBoost, dummy_batch, replace_alexnet
from msjax.models.encoder import Encoder
from msjax.models.products import COMPUTE_DTYPES


def data_root(config: ExperimentConfig, workdir: Path) -> Path:
    """The dataset directory; the synthetic corpus defaults to <workdir>/corpus."""
    if config.data_dir:
        return Path(config.data_dir)
    return RunDir(Path(workdir)).corpus


def alexnet_weights(config: ExperimentConfig) -> dict | None:
    """The AlexNet params a run starts from, read whole and checked (names and shapes);
    None for a random init or a model without the spectrogram branch. ImageNet AlexNet
    is downloaded on first use.

    Raises:
      CheckpointError: the params file is missing, not one, or not AlexNet's; the
        download failed.
    """
    if not config.model.use_spectrogram or config.model.baseline:
        return None
    path = alexnet_weights_file(config.model.alexnet_weights, config.model.random_alexnet)
    return None if path is None else load_alexnet_params(path)


def init_params(
    config: ExperimentConfig,
    model: MSEmoBoost,
    feature_cfg: FeatureConfig,
    encoder: Encoder,
    fold: int,
    alexnet: dict | None = None,
) -> dict:
    """Fresh head params (seeded by seed and fold), `alexnet`'s weights (from
    `alexnet_weights`; None keeps the random init), pretrained encoder."""
    rng = jax.random.fold_in(jax.random.key(config.seed), fold)
    batch = dummy_batch(model, feature_cfg, 1, tuple(config.image_size))
    params = dict(_jitted_init(model)(rng, batch)["params"])
    if alexnet is not None:
        params = replace_alexnet(params, alexnet)
    if model.encoder is not None:
        params["encoder"] = encoder.params
    return params


@functools.cache
def _jitted_init(model: MSEmoBoost) -> Callable:
    """model.init, compiled once per model (not once per fold)."""
    return jax.jit(functools.partial(model.init, train=False))


def compute_dtype(config: ExperimentConfig) -> jnp.dtype:
    """float32, or bfloat16 for mixed precision."""
    return COMPUTE_DTYPES[config.compute_dtype]


def batch_kinds(config: ExperimentConfig) -> tuple[str, ...]:
    """Feature-store entries a batch reads."""
    return ("acoustic", "wav" if config.ssl.finetune else "ssl")


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple (batches split evenly over devices)."""
    return int(math.ceil(n / multiple) * multiple)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batches split along their first axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec("data"))


def checkpoint_metadata(
    config: ExperimentConfig,
    dataset: Dataset,
    feature_cfg: FeatureConfig,
    encoder: Encoder,
    fold: Fold,
) -> dict[str, Any]:
    """What a best checkpoint must carry to predict on its own."""
    return {
        "msjax_version": msjax.__version__,
        "dataset": dataset.name,
        "labels": list(dataset.labels),
        "fold": fold.index,
        "test_speakers": list(fold.test_speakers),
        "features": feature_cfg.to_dict(),
        "image_size": list(config.image_size),
        "model": config.model.to_dict(),
        "compute_dtype": config.compute_dtype,
        "ssl": {
            "name": encoder.name,
            "identity": encoder.identity,
            "normalize": encoder.normalize,
            "finetune": config.ssl.finetune,
            "seed": config.seed,
            "config": dataclasses.asdict(encoder.config),
        },
    }
