"""Port torchvision's AlexNet ImageNet weights to msjax AlexNetFeatures parameters.

The weights come from torchvision's download URL for `alexnet(weights="IMAGENET1K_V1")`,
https://download.pytorch.org/models/alexnet-owt-7be5be79.pth . Training downloads and
ports them on first use (`msjax.convert.download`); by hand (neither needs torch):

    bin/port_alexnet --pth=alexnet-owt-7be5be79.pth --out=alexnet_imagenet.npz

The msjax file is a NumPy .npz archive: one float32 array per parameter, keyed by its
'/'-joined path in the Flax tree ("features_0/kernel", ...), readable without Flax.
Only the `features` convolutions are kept; torchvision's classifier is not used by
MS-EmoBoost, so its tensors are known and dropped. Any other difference (a missing,
unexpected or mis-shaped tensor) is a CheckpointError listing the names
(`msjax.convert.mismatch`).
"""

from collections.abc import Mapping
from pathlib import Path

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from msjax.convert import mismatch
from msjax.convert.pth import read_pth
from msjax.errors import CheckpointError
from msjax.io import npz
from msjax.io.files import atomic_write
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
    flat = flax.traverse_util.flatten_dict(abstract["params"], sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _check(flat: Mapping[str, np.ndarray], source: str) -> None:
    """Raises CheckpointError unless `flat` has exactly the expected paths and shapes."""
    got = {path: value.shape for path, value in flat.items()}
    problems = mismatch.compare(got, expected_shapes())
    mismatch.check(source, "not AlexNet features weights", *problems)


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
    mismatch.check(
        source,
        "not a torchvision AlexNet state dict",
        missing=sorted(k for k in NAME_TABLE if k not in state_dict),
        unexpected=sorted(k for k in state_dict if k not in NAME_TABLE and k not in IGNORED),
    )
    flat = {}
    for torch_name, (path, perm) in NAME_TABLE.items():
        tensor = state_dict[torch_name]
        array = np.asarray(tensor.detach().cpu() if hasattr(tensor, "detach") else tensor)
        flat[path] = np.ascontiguousarray(array.transpose(perm) if perm else array, np.float32)
    _check(flat, source)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


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
    pth = Path(pth)
    if not pth.is_file():
        raise CheckpointError(f"{pth}: no such file; download it from {ALEXNET_URL}")
    state_dict = read_pth(pth)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{pth}: holds a {type(state_dict).__name__}, not a state dict")
    params = port_state_dict(state_dict, str(pth))
    save_params(params, out)
    return params


def save_params(params: Mapping, out: Path) -> None:
    """Writes AlexNetFeatures params to an .npz file keyed by '/'-joined paths."""
    flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
    atomic_write(Path(out), lambda f: np.savez(f, **flat), "the AlexNet params")


def load_alexnet_params(path: Path) -> dict:
    """Loads ported AlexNet params from an msjax .npz file, strictly.

    Raises:
        CheckpointError: the file is missing (the message says how to create it),
            unreadable, or does not hold exactly the AlexNetFeatures parameters as
            finite floats.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no AlexNet params file; create it once with "
            f"`bin/port_alexnet --pth=alexnet-owt-7be5be79.pth --out={path}` "
            f"(the .pth is torchvision's ImageNet AlexNet, {ALEXNET_URL})"
        )
    with open(path, "rb") as f:
        # Anything but a zip archive numpy would take for a pickle, and its error then
        # suggests allow_pickle, which a params file never needs.
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(
                f"{path}: cannot read as an .npz params file (not a zip archive); write "
                f"one with `bin/port_alexnet --pth=alexnet-owt-7be5be79.pth --out={path}`"
            )
    try:
        flat = npz.load(path)
    except Exception as e:  # zipfile/ValueError/OSError for damaged archives.
        reason = "an array of Python objects" if "allow_pickle" in str(e) else e
        raise CheckpointError(f"{path}: cannot read as an .npz params file ({reason})") from e
    _check(flat, str(path))
    bad = sorted(k for k, v in flat.items() if v.dtype.kind != "f" or not np.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{path}: not finite floats: {', '.join(bad)}")
    return flax.traverse_util.unflatten_dict(
        {k: v.astype(np.float32) for k, v in flat.items()}, sep="/"
    )


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
