"""Loads Hugging Face wav2vec2 / HuBERT checkpoints into the Flax `SSLEncoder`.

A checkpoint is a directory with config.json, model.safetensors (or a PyTorch
pytorch_model.bin, read with torch's weights_only loader when torch >= 2.6 is installed)
and usually preprocessor_config.json, or a hub id already in the local Hugging Face cache.
Sharded checkpoints name their shards in an index; a shard must lie beside it.

Tensors are mapped by name, strictly: after dropping a "wav2vec2."/"hubert." prefix and
the known pre-training/task heads, every encoder parameter must be present with the
right shape and nothing else may be left over; otherwise `CheckpointError` lists the
offending names. Because the Flax modules carry the PyTorch attribute names, mapping is
a leaf rename plus a transpose: Linear [out, in] -> kernel [in, out], Conv1d [O, I, K] ->
kernel [K, I, O] (the weight-norm g/v tensors of the positional conv likewise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from msjax.convert import mismatch
from msjax.convert.pth import tensor_budget
from msjax.errors import CheckpointError
from msjax.models.encoder import Encoder
from msjax.models.ssl import SSLConfig, SSLEncoder

logger = logging.getLogger(__name__)

_MODEL_PREFIXES = ("wav2vec2.", "hubert.")
# Pre-training and task heads that sit beside the encoder in HF checkpoints.
_IGNORED_HEADS = (
    "quantizer.",
    "project_q.",
    "project_hid.",
    "final_proj.",
    "label_embs_concat",
    "lm_head.",
    "projector.",
    "classifier.",
    "layer_weights",
)
# The two spellings of PyTorch weight norm: parametrizations (torch >= 2.1) and legacy.
_WEIGHT_NORM_NAMES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
_HUB_FILES = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*.bin",
]


def load_ssl(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    overrides: Mapping[str, Any] | None = None,
) -> Encoder:
    """Loads a wav2vec2/HuBERT checkpoint from a directory or the local hub cache.

    Args:
        name_or_path: a checkpoint directory, or a hub id such as "facebook/wav2vec2-base"
            (resolved through huggingface_hub; only cached files are used when
            HF_HUB_OFFLINE is set).
        dtype: compute dtype of the encoder; parameters stay float32.
        overrides: `SSLConfig` fields to change, e.g. {"layerdrop": 0.0,
            "freeze_feature_encoder": True}.

    Returns:
        The loaded `msjax.models.encoder.Encoder`, named `name_or_path`.

    Raises:
        CheckpointError: missing files, an unsupported config, or tensors that do not
            match the encoder (all mismatching names are listed).
    """
    root = _resolve(str(name_or_path))
    hf_config = _read_json(root / "config.json")
    try:
        file_config = SSLConfig.from_hf_config(hf_config)
        config = dataclasses.replace(file_config, **dict(overrides or {}))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{root / 'config.json'}: {err}") from None
    normalize, sampling_rate = _preprocessing(root, file_config)
    tensors, source = _load_tensors(root, str(name_or_path))
    module = SSLEncoder(config, dtype=dtype)
    params, used = _convert(tensors, module, source)
    identity = _identity(file_config, normalize, dtype, used)
    return Encoder(
        name=str(name_or_path), module=module, params=params, config=config,
        normalize=normalize, identity=identity, sampling_rate=sampling_rate,
    )


def _resolve(name: str) -> Path:
    """A checkpoint directory for a local path or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{name}: is a file; pass the checkpoint directory")
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: no such checkpoint directory (nor a hub id org/name)")
    # Imported here: only hub ids need it. Public names only: huggingface_hub 2.x loads
    # its submodules lazily, so `huggingface_hub.constants` is unbound after a bare import.
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import is_offline_mode, snapshot_download

    # The hub library reads HF_HUB_OFFLINE once at import; honour a later setting too.
    offline = is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1", "ON", "YES", "TRUE"
    )
    try:
        snapshot = snapshot_download(name, allow_patterns=_HUB_FILES, local_files_only=offline)
    except hub_errors.HFValidationError:
        raise CheckpointError(
            f"{name}: no such checkpoint directory (nor a valid hub id org/name)"
        ) from None
    except (hub_errors.HfHubHTTPError, OSError) as err:
        raise CheckpointError(
            f"{name}: not a directory, and as a hub id {_hub_reason(err, offline)}; "
            f"{_hint(name)}"
        ) from None
    return Path(snapshot)


def _hub_reason(err: Exception, offline: bool) -> str:
    """Why the hub could not give a checkpoint, in words (for `_resolve`'s message)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    if isinstance(err, hub_errors.IncompleteSnapshotError):
        return f"its snapshot in the hub cache {constants.HF_HUB_CACHE} is incomplete"
    if isinstance(err, hub_errors.LocalEntryNotFoundError):
        where = "offline (HF_HUB_OFFLINE)" if offline else "the hub cannot be reached"
        return f"it is not in the hub cache {constants.HF_HUB_CACHE} and {where}"
    if isinstance(err, hub_errors.RepositoryNotFoundError):
        return "the hub has no such model (or it is private or gated: `hf auth login`)"
    detail = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
    return f"the download failed ({detail})"


def _hint(name: str) -> str:
    return (
        f"download config.json, preprocessor_config.json and model.safetensors (or "
        f"pytorch_model.bin) on a connected machine, e.g. `hf download {name} --local-dir DIR "
        f"--include '*.json' --include '*.safetensors'`, then pass DIR"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested too deep
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from None


def _preprocessing(root: Path, config: SSLConfig) -> tuple[bool, int]:
    """(normalize, sampling_rate) from preprocessor_config.json or per-model defaults."""
    path = root / "preprocessor_config.json"
    if path.exists():
        pre = _read_json(path)
        if "do_normalize" in pre:
            return bool(pre["do_normalize"]), int(pre.get("sampling_rate", 16000))
    # transformers' conversion scripts normalise every wav2vec2 model and only the
    # layer-norm (Large) HuBERT models.
    normalize = config.model_type == "wav2vec2" or config.feat_extract_norm == "layer"
    logger.warning(
        "%s: no do_normalize in preprocessor_config.json; assuming do_normalize=%s for %s",
        root,
        normalize,
        config.model_type,
    )
    return normalize, 16000


def _load_tensors(root: Path, name: str) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of the checkpoint as numpy arrays, and the file they came from."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (root / single).exists():
            files = [root / single]
        elif (root / index).exists():
            files = [root / shard for shard in _shards(root / index)]
        else:
            continue
        tensors = {}
        for file in files:
            tensors.update(_read_weights(file))
        return tensors, files[0]
    hint = _hint(name) if not Path(name).expanduser().is_dir() else "save the model there"
    raise CheckpointError(f"{root}: no model.safetensors or pytorch_model.bin; {hint}")


def _shards(index: Path) -> list[str]:
    """The shard files an index names: file names beside it, never a path elsewhere."""
    weight_map = _read_json(index)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
    if not shards or not all(
        isinstance(s, str) and s == Path(s).name and s not in (".", "..") for s in shards
    ):
        raise CheckpointError(
            f"{index}: its weight_map must map tensor names to shard files in its folder"
        )
    return sorted(shards)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own untyped errors
            raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from None
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading PyTorch .bin weights needs torch; install it or convert the "
            "checkpoint to model.safetensors"
        ) from None
    if torch.__version__ < "2.6":
        raise CheckpointError(
            f"{path}: torch {torch.__version__}'s weights_only loader lets a file run code "
            "(CVE-2025-32434); upgrade torch to 2.6 or later, or convert the checkpoint to "
            "model.safetensors"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many unrelated types for bad files
        raise CheckpointError(f"{path}: unreadable PyTorch weights ({err})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    # As float32 copies; tensors that share or expand a storage could take far more.
    nbytes = 4 * sum(v.numel() for v in tensors.values())
    if nbytes > tensor_budget(path.stat().st_size):
        raise CheckpointError(
            f"{path}: its tensors would take {nbytes} bytes, far more than the file holds"
        )
    try:
        return {
            k: (v.float() if v.is_floating_point() else v).numpy() for k, v in tensors.items()
        }
    except (TypeError, RuntimeError) as err:  # sparse, quantized, meta tensors
        raise CheckpointError(f"{path}: a tensor NumPy cannot hold ({err})") from None


def _canonical_name(key: str) -> str | None:
    """The encoder-relative name of a checkpoint key, or None for a known head."""
    for prefix in _MODEL_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key.startswith(_IGNORED_HEADS):
        return None
    for old, new in _WEIGHT_NORM_NAMES.items():
        key = key.replace(old, new)
    return key


def _convert(
    tensors: Mapping[str, np.ndarray], module: SSLEncoder, source: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Maps checkpoint tensors onto the module's parameter tree, strictly.

    Returns:
        The parameter tree and the used tensors by canonical name (for the identity).
    """
    cfg = module.config
    abstract = jax.eval_shape(
        module.init, jax.random.key(0), jnp.zeros((1, cfg.receptive_field), jnp.float32)
    )["params"]
    expected = flax.traverse_util.flatten_dict(abstract)
    modules = {path[:-1] for path in expected}
    flat, used, unexpected, wrong = {}, {}, [], []
    for key in sorted(tensors):
        name = _canonical_name(key)
        if name is None:
            continue
        if name == "masked_spec_embed" and not cfg.uses_masked_spec_embed:
            continue  # Only used for train-time masking, which this config turns off.
        *parent, leaf = name.split(".")
        parent = tuple(parent)
        if leaf == "weight" and parent in modules:
            leaf = "kernel" if parent + ("kernel",) in expected else "scale"
        path = parent + (leaf,)
        if path not in expected:
            unexpected.append(key)
            continue
        value = _to_flax_layout(np.asarray(tensors[key], np.float32))
        if value.shape != expected[path].shape:
            wrong.append(mismatch.wrong_shape(key, tensors[key].shape, expected[path].shape))
            continue
        flat[path] = value
        used[name] = tensors[key]
    missing = [p for p in expected if p not in flat]
    if missing == [("masked_spec_embed",)]:
        # Checkpoints without it (mask_time_prob was 0) get transformers' fresh init.
        logger.warning("%s: no masked_spec_embed; initialising it uniformly in [0, 1)", source)
        flat[missing.pop()] = np.asarray(
            jax.random.uniform(jax.random.key(0), (cfg.hidden_size,)), np.float32
        )
    mismatch.check(
        str(source), f"does not match the {cfg.model_type} encoder",
        [_hf_name(p) for p in missing], unexpected, wrong,
    )
    params = flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
    return params, used


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
    """Linear [out, in] -> [in, out]; Conv1d and weight-norm [O, I, K] -> [K, I, O]."""
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(2, 1, 0))
    return value


def _hf_name(path: tuple[str, ...]) -> str:
    """The checkpoint key a Flax parameter path comes from (for error messages)."""
    leaf = "weight" if path[-1] in ("kernel", "scale") else path[-1]
    return ".".join(path[:-1] + (leaf,))


def _identity(
    config: SSLConfig, normalize: bool, dtype: Any, tensors: Mapping[str, np.ndarray]
) -> str:
    """sha256 over what determines the encoder's output for a given waveform."""
    digest = hashlib.sha256()
    header = {
        "config": dataclasses.asdict(config),
        "normalize": normalize,
        "dtype": jnp.dtype(dtype).name,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.data)
    return digest.hexdigest()
