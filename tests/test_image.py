"""Tests for msjax.features.image: min-max statistics and the spectrogram-to-image transform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from msjax.features.image import IMAGENET_MEAN, IMAGENET_STD, MinMaxStats, fit_minmax, spec_to_image

MEAN = np.asarray(IMAGENET_MEAN, np.float32)
STD = np.asarray(IMAGENET_STD, np.float32)


def _stats(lo=-80.0, hi=0.0, bins=200) -> MinMaxStats:
    return MinMaxStats(np.full(bins, lo, np.float32), np.full(bins, hi, np.float32))


def test_fit_minmax_per_bin():
    rng = np.random.default_rng(0)
    specs = [rng.uniform(-80, 0, size=(200, t)).astype(np.float32) for t in (5, 301, 37)]
    joined = np.concatenate(specs, axis=1)
    stats = fit_minmax(iter(specs))  # any iterable, consumed once
    assert stats.lo.shape == stats.hi.shape == (200,)
    assert stats.lo.dtype == stats.hi.dtype == np.float32
    np.testing.assert_array_equal(stats.lo, joined.min(axis=1))
    np.testing.assert_array_equal(stats.hi, joined.max(axis=1))
    np.testing.assert_array_equal(np.concatenate(specs, axis=1), joined)  # inputs untouched


def test_fit_minmax_errors():
    with pytest.raises(ValueError, match="no spectrograms"):
        fit_minmax([])
    with pytest.raises(ValueError, match="bins"):
        fit_minmax([np.zeros((200, 3)), np.zeros((100, 3))])


def test_shape_and_dtype():
    spec = np.random.default_rng(1).uniform(-80, 0, size=(2, 200, 300)).astype(np.float32)
    image = spec_to_image(spec, *_stats())
    assert image.shape == (2, 256, 384, 3) and image.dtype == jnp.float32
    # The three channels carry the same grey image.
    grey = np.asarray(image) * STD + MEAN
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-5)


@pytest.mark.parametrize(
    "value,level", [(-80.0, 0.0), (0.0, 1.0), (-40.0, 0.5), (-200.0, 0.0), (30.0, 1.0)]
)
def test_constant_input_normalisation(value, level):
    image = spec_to_image(np.full((1, 200, 300), value, np.float32), *_stats())
    expected = (level - MEAN) / STD
    np.testing.assert_allclose(np.asarray(image), np.broadcast_to(expected, image.shape), atol=1e-5)


def test_low_frequencies_at_the_bottom():
    spec = np.full((1, 200, 300), -80.0, np.float32)
    spec[0, 0] = 0.0  # lowest bin loud
    grey = np.asarray(spec_to_image(spec, *_stats()))[0, :, :, 0] * STD[0] + MEAN[0]
    assert grey[-1].min() > 0.99  # bottom row
    assert grey[:-2].max() < 1e-5  # everything above the last rows stays dark
    spec = np.full((1, 200, 300), -80.0, np.float32)
    spec[0, 199] = 0.0  # highest bin loud
    grey = np.asarray(spec_to_image(spec, *_stats()))[0, :, :, 0] * STD[0] + MEAN[0]
    assert grey[0].min() > 0.99 and grey[2:].max() < 1e-5


def test_constant_bin_is_guarded():
    lo = np.zeros(200, np.float32)
    stats = MinMaxStats(lo, lo.copy())  # hi == lo everywhere
    spec = np.random.default_rng(2).uniform(-1, 1, size=(1, 200, 300)).astype(np.float32)
    image = np.asarray(spec_to_image(spec, *stats))
    assert np.isfinite(image).all()
    grey = image[..., 0] * STD[0] + MEAN[0]
    assert grey.min() >= -1e-5 and grey.max() <= 1 + 1e-5


def test_matches_pil_bilinear_resize():
    # torchvision's Resize(256) on a PIL image, without CM's uint8 rounding.
    rng = np.random.default_rng(3)
    spec = rng.uniform(-80, 0, size=(1, 200, 300)).astype(np.float32)
    lo, hi = rng.uniform(-80, -60, 200), rng.uniform(-20, 0, 200)
    scaled = np.clip((spec[0] - lo[:, None]) / (hi - lo)[:, None], 0, 1)[::-1]
    resized = Image.fromarray(scaled.astype(np.float32), mode="F").resize(
        (384, 256), Image.BILINEAR
    )
    expected = (np.asarray(resized)[..., None] - MEAN) / STD
    image = spec_to_image(spec, lo.astype(np.float32), hi.astype(np.float32))
    np.testing.assert_allclose(np.asarray(image[0]), expected, atol=1e-4)


def test_jits_and_traces_once():
    traces = []

    @jax.jit
    def step(spec, stats):
        traces.append(None)
        return spec_to_image(spec, stats.lo, stats.hi)

    rng = np.random.default_rng(4)
    stats = _stats(-70.0, -5.0)
    for _ in range(2):
        spec = rng.uniform(-80, 0, size=(3, 200, 300)).astype(np.float32)
        out = step(spec, stats)
        np.testing.assert_allclose(
            np.asarray(out), np.asarray(spec_to_image(spec, *stats)), atol=1e-5
        )
    assert out.shape == (3, 256, 384, 3) and len(traces) == 1
