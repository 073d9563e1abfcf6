"""The experiment a run describes, typed and checked once: `ExperimentConfig.build(cfg)`.

A ConfigDict (a configs/ file with its --config.* overrides and plain flags, or a saved
config.json) becomes frozen dataclasses with the ConfigDict's field names, so every
setting has one name from the flag to the module: `features` is the FeatureConfig
itself, `model` holds MSEmoBoost's attributes by their names (msjax.inference.build_model
passes them on), and a section reads as the ConfigDict did (`config.optim.learning_rate`,
`config["seed"]`, `dict(config.model)`).

Building rejects unknown and missing fields and checks every value (`_check`), raising
one-line `UsageError`s that name the `--config.*` field (or plain flag), before anything
is written to a workdir. A field added after runs were saved has a default: the value
those runs behaved as, so their config.json still resumes.

Plain flags (--folds, --ssl, ...) are declared next to their field (`plain_flags`);
`rerun` fields may differ when a workdir is reused.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
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


def _flag(name: str, help: str, **more: Any) -> dict:
    """Field metadata: the field is also set by the plain flag --name."""
    return {"flag": name, "help": help, **more}


# Field metadata: the field may differ when a workdir is reused (where or which folds
# run, not what a fold computes); with a flag, the flag also applies on --resume.
_RERUN = {"rerun": True}


class _Section(Mapping):
    """A frozen dataclass that reads like the ConfigDict it came from: attributes, and a
    mapping over its fields (an optional field left out of the config, None, is absent)."""

    def _present(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self._present():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def to_dict(self) -> dict[str, Any]:
        """The fields as the ConfigDict's `to_dict` gives them (sections nested)."""
        return {
            k: v.to_dict() if isinstance(v, (_Section, FeatureConfig)) else v
            for k, v in self.items()
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class SSLConfig(_Section):
    """The SSL encoder: a hub id, a local checkpoint directory or "random:<preset>"."""

    name: str = dataclasses.field(
        metadata=_flag("ssl", "SSL encoder: hub id, local directory or random:<preset>.")
    )
    finetune: bool = dataclasses.field(
        metadata=_flag("finetune_ssl", "Fine-tune the SSL encoder inside the model.")
    )
    freeze_feature_encoder: bool
    mask_time_prob: float
    mask_time_length: int
    layerdrop: float
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    extract_batch_size: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    """MS-EmoBoost: the fields MSEmoBoost has (same names) and how its weights start."""

    lstm_hidden: int
    lstm_dropout: float
    branch_dim: int
    dropout: float
    use_attention: bool
    use_mfcc: bool
    use_spectrogram: bool
    baseline: bool
    zero_init_classifier: bool
    alexnet_weights: str
    random_alexnet: bool

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """From a checkpoint's "model" metadata: other keys are ignored, a field the
        metadata predates takes its default. Raises KeyError: a field it lacks."""
        return cls(**{
            f.name: values[f.name] for f in dataclasses.fields(cls)
            if f.name in values or f.default is dataclasses.MISSING
        })


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig(_Section):
    """Optimisation (paper Table 1: Adam, lr 1e-5, cross-entropy)."""

    learning_rate: float
    batch_size: int
    eval_batch_size: int
    num_epochs: int
    patience: int
    class_weights: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig(_Section):
    """The generated corpus (msjax.data.synthetic.generate_corpus's arguments)."""

    seed: int
    num_speakers: int
    utterances_per_emotion: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig(_Section):
    """A whole run; configs/default.py documents each field."""

    dataset: str
    data_dir: str = dataclasses.field(metadata=_flag("data_dir", "Dataset root directory."))
    allow_count_mismatch: bool = dataclasses.field(
        metadata=_flag("allow_count_mismatch", "Proceed when the dataset's utterance counts "
                       "differ.")
    )
    allow_damaged: bool = dataclasses.field(
        default=False,
        metadata=_flag("allow_damaged", "Skip (and list) truncated audio files instead of "
                       "stopping."),
    )
    protocol: str
    num_folds: int = dataclasses.field(
        metadata=_flag("folds", "Number of folds (0 = the protocol's natural count).")
    )
    fold: int = dataclasses.field(
        metadata=_flag("fold", "Run this fold only (folds as separate jobs).", **_RERUN)
    )
    validation: str
    seed: int = dataclasses.field(
        metadata=_flag("seed", "Seed for folds, shuffling, initialisation, dropout.")
    )
    seeds: int = dataclasses.field(
        default=1,
        metadata=_flag("seeds", "Trainings per fold, seeded --seed, --seed + 1, ... (same "
                       "folds)."),
    )
    features: FeatureConfig
    image_size: tuple[int, int]
    cache_dir: str = dataclasses.field(metadata=_RERUN)
    feature_workers: int = dataclasses.field(metadata=_RERUN)
    use_cache: bool = dataclasses.field(
        metadata=_flag("no_cache", "Neither read nor write the feature cache.", invert=True,
                       **_RERUN)
    )
    ssl: SSLConfig
    model: ModelConfig
    optim: OptimConfig
    compute_dtype: str
    tsne: bool = dataclasses.field(metadata=_RERUN)
    # Only in the configs of the corpora that read them.
    synthetic: SyntheticConfig | None = None
    labels: str | None = None
    label_map: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_size, (list, tuple)):  # a list when read from JSON
            object.__setattr__(self, "image_size", tuple(self.image_size))
        _check(self)

    @classmethod
    def build(
        cls, cfg: ExperimentConfig | ml_collections.ConfigDict | Mapping[str, Any]
    ) -> ExperimentConfig:
        """The typed config of a ConfigDict or a config.json's content; a typed one as
        it is.

        Raises:
            UsageError: an unknown or missing field, or a value out of its type or range.
        """
        if isinstance(cfg, cls):
            return cfg
        return _section(cls, cfg, "")


# Fields that may differ when a workdir is reused.
RERUN_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ExperimentConfig) if f.metadata.get("rerun")
)


@dataclasses.dataclass(frozen=True)
class PlainFlag:
    """--name sets the config field `field` (dotted); `invert`: to the flag's negation."""

    name: str
    field: str
    kind: type
    help: str
    invert: bool = False
    rerun: bool = False


def plain_flags() -> tuple[PlainFlag, ...]:
    """Every plain flag, from the field metadata of ExperimentConfig and its sections."""
    found = []
    for prefix, cls in (("", ExperimentConfig), ("ssl.", SSLConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "flag" in f.metadata:
                m = f.metadata
                found.append(PlainFlag(
                    m["flag"], prefix + f.name, hints[f.name], m["help"],
                    m.get("invert", False), m.get("rerun", False),
                ))
    return tuple(found)


def _sections(cls: type) -> dict[str, type]:
    """Field name -> the section type (a _Section or FeatureConfig) of `cls`'s groups."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        for kind in typing.get_args(hint) or (hint,):
            if isinstance(kind, type) and issubclass(kind, (_Section, FeatureConfig)):
                out[name] = kind
    return out


def _schema_names(cls: type, prefix: str = "") -> Iterator[str]:
    """Dotted names of every leaf field `cls` describes."""
    sections = _sections(cls)
    for f in dataclasses.fields(cls):
        if f.name in sections:
            yield from _schema_names(sections[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def _section(cls: type, values: Any, prefix: str) -> Any:
    """`cls` from the mapping `values` (the fields under `--config.<prefix>`)."""
    if not isinstance(values, (Mapping, ml_collections.ConfigDict)):
        raise UsageError(f"--config.{prefix.rstrip('.')}={values!r}: must be a group of fields")
    if cls is FeatureConfig:
        try:
            return FeatureConfig(**values)
        except (UsageError, TypeError) as err:
            raise UsageError(f"--config.features: {err}") from None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values.keys():
        if name not in fields:
            known = list(_schema_names(ExperimentConfig))
            raise UsageError(unknown_field_message(prefix + name, known))
    sections = _sections(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            value = values[name]
            kwargs[name] = (
                _section(sections[name], value, f"{prefix}{name}.") if name in sections
                else value
            )
        elif f.default is dataclasses.MISSING:
            raise UsageError(f"--config.{prefix}{name}: missing from the config")
    return cls(**kwargs)


def field_names(
    config: Mapping[str, Any] | ml_collections.ConfigDict, prefix: str = ""
) -> Iterator[str]:
    """Dotted names of every leaf field of a ConfigDict, e.g. "optim.batch_size"."""
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


def _get(config: ExperimentConfig, name: str) -> Any:
    for part in name.split("."):
        config = getattr(config, part)
    return config


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


def _check(config: ExperimentConfig) -> None:
    """Raises UsageError for the first field out of its type or range (the features
    checked themselves when built)."""
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
    _int(config, "seeds", 1, 2**32 - config.seed)
    if config.seeds > 1 and config.tsne:
        raise UsageError("--tsne plots one training per fold; drop it or use --seeds=1")
    _int(config, "feature_workers", 0)
    size = config.image_size
    if not isinstance(size, tuple) or len(size) != 2 or not all(
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
    _choice(config, "ssl.remat_policy", REMAT_POLICIES)
    if not isinstance(config.features, FeatureConfig):
        raise UsageError(f"--config.features={config.features!r}: must be a FeatureConfig")
