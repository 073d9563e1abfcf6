"""Log spectrogram segments to AlexNet input images.

The spectrogram branch sees each [200, 300] dB segment as a grey image, as in CM:
every frequency bin is min-max scaled with statistics of the training fold only
(`fit_minmax`, numpy, run once per fold), clipped to [0, 1] and flipped so that low
frequencies are at the bottom; the image is resized so its short side is 256
(bilinear: 200x300 -> 256x384), copied to three channels and standardised with the
ImageNet mean and std. `spec_to_image` is pure `jax.numpy`, so it runs inside the
jitted training step on the accelerator.

Differences from CM, on purpose: CM quantises the scaled image to uint8 before
resizing (a side effect of going through PIL); here it stays float32.

Padded segments enter the fit, on purpose (CM fits on them too). Segment padding
is the -top_db floor (msjax.features.acoustic.segment), the value every spectrogram is
clipped to, so it can only lower a bin's minimum to a level real silence reaches
anyway, never raise or stretch a range; and it makes padding scale to exactly 0,
the same black as silence, instead of to wherever the floor falls in a range
fitted without it. Fitting on whole segments also needs no frame mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = (256, 384)

# A bin whose training range is narrower than this is left unscaled (divided by 1,
# as scikit-learn's MinMaxScaler, which CM uses, does for a constant feature).
_MIN_RANGE = 1e-6


class MinMaxStats(NamedTuple):
    """Per-frequency-bin range of the training spectrograms (a pytree of two arrays).

    Attributes:
        lo: float32 [F] minimum of each bin.
        hi: float32 [F] maximum of each bin.
    """

    lo: np.ndarray
    hi: np.ndarray


def fit_minmax(specs: Iterable[np.ndarray]) -> MinMaxStats:
    """Per-bin minimum and maximum over spectrograms of the training fold.

    Args:
        specs: [F, T] log spectrograms (T may differ between them): the training
            split's segments, padded ones included (see the module docstring).

    Returns:
        MinMaxStats with float32 [F] lo and hi.

    Raises:
        ValueError: no spectrograms, or they disagree on F.
    """
    lo = hi = None
    for spec in specs:
        spec = np.asarray(spec, dtype=np.float32)
        if lo is None:
            lo, hi = spec.min(axis=1), spec.max(axis=1)
            continue
        if spec.shape[0] != lo.shape[0]:
            raise ValueError(
                f"fit_minmax: a spectrogram has {spec.shape[0]} bins, the first had {lo.shape[0]}"
            )
        np.minimum(lo, spec.min(axis=1), out=lo)
        np.maximum(hi, spec.max(axis=1), out=hi)
    if lo is None:
        raise ValueError("fit_minmax: no spectrograms given")
    return MinMaxStats(lo=lo, hi=hi)


def spec_to_image(
    spec: jax.Array, lo: jax.Array, hi: jax.Array, size: tuple[int, int] = IMAGE_SIZE
) -> jax.Array:
    """Turns spectrogram segments into normalised 3-channel images.

    Args:
        spec: [B, F, T] log spectrogram segments (F = 200, T = 300 by default).
        lo: [F] per-bin minimum from `fit_minmax`.
        hi: [F] per-bin maximum from `fit_minmax`.
        size: output (height, width); static under jit.

    Returns:
        float32 [B, height, width, 3] (NHWC); row 0 is the highest frequency bin.
    """
    spec = jnp.asarray(spec, jnp.float32)
    lo = jnp.asarray(lo, jnp.float32)[:, None]
    span = jnp.asarray(hi, jnp.float32)[:, None] - lo
    span = jnp.where(span < _MIN_RANGE, 1.0, span)
    scaled = jnp.clip((spec - lo) / span, 0.0, 1.0)
    scaled = jnp.flip(scaled, axis=1)  # [B, F, T], highest frequency first
    # Bilinear with half-pixel centres, as PIL (and so torchvision) upsamples.
    image = jax.image.resize(scaled, (spec.shape[0], *size), method="bilinear")
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (image[..., None] - mean) / std  # [B, H, W, 3]
