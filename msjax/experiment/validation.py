"""Checks of a run config, done before anything is written to the workdir.

`check_config` raises a one-line `UsageError` naming the `--config.*` field (or
plain flag) and the range it must lie in, so a mistyped value fails in seconds
and leaves the workdir as it was.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections

from msjax.data.folds import PROTOCOLS
from msjax.errors import UsageError
from msjax.features.acoustic import FeatureConfig
from msjax.models.products import COMPUTE_DTYPES
from msjax.models.ssl import REMAT_POLICIES

# Smallest spectrogram image side AlexNet's five convolutions and three poolings accept.
MIN_IMAGE_SIDE = 63
VALIDATIONS = ("heldout", "test")


def field_names(
    config: Mapping[str, Any] | ml_collections.ConfigDict, prefix: str = ""
) -> Iterator[str]:
    """Dotted names of every leaf field, e.g. "optim.batch_size"."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            yield from field_names(value, name + ".")
        else:
            yield name


def unknown_field_message(name: str, known: list[str]) -> str:
    """`--config.<name>: no such field` plus the closest known one."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
    hint = f"; did you mean --config.{close[0]}?" if close else ""
    return f"--config.{name}: no such config field{hint}"


def _int(config, name: str, lo: int, hi: float = math.inf) -> None:
    value = _get(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        bound = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise UsageError(f"--config.{name}={value!r}: must be an integer {bound}")


def _real(config, name: str, lo: float, hi: float, *, open_lo: bool = False,
          open_hi: bool = False) -> None:
    value = _get(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if open_lo else value >= lo) and (value < hi if open_hi else value <= hi)
    if not ok:
        brackets = ("(" if open_lo else "[") + f"{lo:g}, {hi:g}" + (")" if open_hi else "]")
        raise UsageError(f"--config.{name}={value!r}: must be a finite number in {brackets}")


def _choice(config, name: str, choices: tuple[str, ...]) -> None:
    value = _get(config, name)
    if value not in choices:
        raise UsageError(f"--config.{name}={value!r}: must be one of {', '.join(choices)}")


def _get(config, name: str) -> Any:
    for part in name.split("."):
        config = config[part]
    return config


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UsageError for the first field out of its type or range.

    Covers what a run reads: data, folds, features, image size, model, optimiser.
    """
    if config.dataset != "synthetic" and not config.data_dir:
        raise UsageError(f"--data_dir is required for --dataset={config.dataset}")
    _choice(config, "protocol", PROTOCOLS)
    _choice(config, "validation", VALIDATIONS)
    _choice(config, "compute_dtype", tuple(COMPUTE_DTYPES))
    _int(config, "num_folds", 0)
    if config.fold != -1:
        value = config.fold
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"--fold={value!r}: must be a fold index >= 0")
    _int(config, "seed", 0, 2**32 - 1)
    if "seeds" in config:  # configs saved before the field train one seed per fold
        _int(config, "seeds", 1, 2**32 - config.seed)
        if config.seeds > 1 and config.tsne:
            raise UsageError("--tsne plots one training per fold; drop it or use --seeds=1")
    _int(config, "feature_workers", 0)
    size = tuple(config.image_size)
    if len(size) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= MIN_IMAGE_SIDE for s in size
    ):
        raise UsageError(
            f"--config.image_size={size!r}: must be two integers (height, width), "
            f"each >= {MIN_IMAGE_SIDE}"
        )
    for name in ("batch_size", "eval_batch_size", "num_epochs", "patience"):
        _int(config, f"optim.{name}", 1)
    _real(config, "optim.learning_rate", 0.0, math.inf, open_lo=True, open_hi=True)
    for name in ("lstm_hidden", "branch_dim"):
        _int(config, f"model.{name}", 1)
    for name in ("lstm_dropout", "dropout"):
        _real(config, f"model.{name}", 0.0, 1.0, open_hi=True)
    _int(config, "ssl.extract_batch_size", 1)
    _real(config, "ssl.mask_time_prob", 0.0, 1.0)
    _int(config, "ssl.mask_time_length", 1)
    _real(config, "ssl.layerdrop", 0.0, 1.0)
    if "remat_policy" in config.ssl:  # configs saved before the field never rematerialise
        _choice(config, "ssl.remat_policy", REMAT_POLICIES)
    try:
        FeatureConfig(**config.features)
    except UsageError as err:
        raise UsageError(f"--config.features: {err}") from None
    except TypeError as err:
        raise UsageError(f"--config.features: {err}") from None
