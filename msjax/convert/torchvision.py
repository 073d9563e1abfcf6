"""Port torchvision's AlexNet ImageNet weights to msjax AlexNetFeatures parameters.

The weights come from torchvision's download URL for `alexnet(weights="IMAGENET1K_V1")`,
https://download.pytorch.org/models/alexnet-owt-7be5be79.pth . Training downloads and
ports them on first use (`msjax.convert.download`, no torch needed); by hand, with torch:

    bin/port_alexnet --pth=alexnet-owt-7be5be79.pth --out=alexnet_imagenet.npz

The msjax file is a NumPy .npz archive: one float32 array per parameter, keyed by its
'/'-joined path in the Flax tree ("features_0/kernel", ...), readable without Flax.
Only the `features` convolutions are kept; torchvision's classifier is not used by
MS-EmoBoost, so its tensors are known and dropped. Any other difference (a missing,
unexpected or mis-shaped tensor) is a CheckpointError listing the names.
"""

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from msjax.errors import CheckpointError
from msjax.files import atomic_write
from msjax.models.alexnet import CONV_LAYERS, AlexNetFeatures

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

# torchvision state-dict key -> (Flax path, transpose applied to the tensor).
NAME_TABLE: dict[str, tuple[str, tuple[int, ...] | None]] = {
    f"features.{index}.{leaf}": (f"features_{index}/{name}", perm)
    for index, *_ in CONV_LAYERS
    for leaf, name, perm in (("weight", "kernel", (2, 3, 1, 0)), ("bias", "bias", None))
}

# Present in torchvision's checkpoint, deliberately not ported.
IGNORED = tuple(f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias"))


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Flat Flax path -> shape of every AlexNetFeatures parameter."""
    abstract = jax.eval_shape(
        AlexNetFeatures().init, jax.random.key(0), jnp.zeros((1, 224, 224, 3), jnp.float32)
    )
    leaves = jax.tree_util.tree_leaves_with_path(abstract["params"])
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def _check(flat: Mapping[str, np.ndarray], source: str) -> None:
    """Raises CheckpointError unless `flat` has exactly the expected paths and shapes."""
    want = expected_shapes()
    missing = sorted(set(want) - set(flat))
    unexpected = sorted(set(flat) - set(want))
    wrong = sorted(
        f"{k} {tuple(flat[k].shape)} != {want[k]}"
        for k in set(want) & set(flat)
        if tuple(flat[k].shape) != want[k]
    )
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if names
    ]
    if problems:
        raise CheckpointError(f"{source}: not AlexNet features weights; " + "; ".join(problems))


def port_state_dict(state_dict: Mapping[str, object], source: str = "state dict") -> dict:
    """Converts a torchvision AlexNet state dict to AlexNetFeatures parameters.

    Args:
        state_dict: torchvision `alexnet().state_dict()` (torch tensors or arrays).
        source: name used in error messages (the .pth path).

    Returns:
        Flax params {'features_0': {'kernel': [11, 11, 3, 64], 'bias': [64]}, ...}
        as float32 NumPy arrays.

    Raises:
        CheckpointError: a tensor is missing, unexpected or has the wrong shape.
    """
    unknown = sorted(k for k in state_dict if k not in NAME_TABLE and k not in IGNORED)
    missing = sorted(k for k in NAME_TABLE if k not in state_dict)
    if unknown or missing:
        raise CheckpointError(
            f"{source}: not a torchvision AlexNet state dict; "
            f"missing: {', '.join(missing) or '-'}; unexpected: {', '.join(unknown) or '-'}"
        )
    flat = {}
    for torch_name, (path, perm) in NAME_TABLE.items():
        tensor = state_dict[torch_name]
        array = np.asarray(tensor.detach().cpu() if hasattr(tensor, "detach") else tensor)
        flat[path] = np.ascontiguousarray(array.transpose(perm) if perm else array, np.float32)
    _check(flat, source)
    return _unflatten(flat)


def port_pth(pth: Path, out: Path) -> dict:
    """Reads a torchvision AlexNet .pth and writes the msjax .npz params file.

    Args:
        pth: torchvision checkpoint, e.g. alexnet-owt-7be5be79.pth from ALEXNET_URL.
        out: destination .npz file (parent folders are created).

    Returns:
        The ported params tree.

    Raises:
        CheckpointError: the .pth is missing, unreadable or not AlexNet.
    """
    import torch  # Only the one-off port needs PyTorch.

    pth = Path(pth)
    if not pth.is_file():
        raise CheckpointError(f"{pth}: no such file; download it from {ALEXNET_URL}")
    try:
        state_dict = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file.
        raise CheckpointError(f"{pth}: cannot read as a PyTorch checkpoint ({e})") from e
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{pth}: holds a {type(state_dict).__name__}, not a state dict")
    params = port_state_dict(state_dict, str(pth))
    save_params(params, out)
    return params


def save_params(params: Mapping, out: Path) -> None:
    """Writes AlexNetFeatures params to an .npz file keyed by '/'-joined paths."""
    flat = {
        "/".join(k.key for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    atomic_write(Path(out), lambda f: np.savez(f, **flat), "the AlexNet params")


def load_alexnet_params(path: Path) -> dict:
    """Loads ported AlexNet params from an msjax .npz file, strictly.

    Raises:
        CheckpointError: the file is missing (the message says how to create it),
            unreadable, or does not hold exactly the AlexNetFeatures parameters.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no AlexNet params file; create it once with "
            f"`bin/port_alexnet --pth=alexnet-owt-7be5be79.pth --out={path}` "
            f"(the .pth is torchvision's ImageNet AlexNet, {ALEXNET_URL})"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile/ValueError/OSError for damaged archives.
        raise CheckpointError(f"{path}: cannot read as an .npz params file ({e})") from e
    _check(flat, str(path))
    return _unflatten({k: v.astype(np.float32) for k, v in flat.items()})


def alexnet_params(path: Path | None, rng: jax.Array | None = None) -> dict:
    """AlexNetFeatures params: ported ImageNet weights, or a random init when path is None.

    Args:
        path: msjax .npz params file written by bin/port_alexnet, or None for a random
            initialisation (tests, CI, training from scratch).
        rng: PRNG key for the random initialisation (required when path is None).

    Returns:
        Params tree {'features_0': {...}, ..., 'features_10': {...}}.
    """
    if path is not None:
        return load_alexnet_params(path)
    if rng is None:
        raise ValueError("alexnet_params(None, rng) needs an rng for the random init")
    x = jnp.zeros((1, 224, 224, 3), jnp.float32)
    return AlexNetFeatures().init(rng, x)["params"]
