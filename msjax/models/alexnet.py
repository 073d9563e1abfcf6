"""AlexNet's convolutional stack (torchvision layout) in NHWC, and PyTorch's adaptive pooling.

The spectrogram branch of MS-EmoBoost runs torchvision's `alexnet().features` on a
[B, 256, 384, 3] image and pools the [B, 7, 11, 256] map to [B, 6, 6, 256] the way
`nn.AdaptiveAvgPool2d((6, 6))` does. The classifier of torchvision's AlexNet is not
part of the model, so it has no parameters here.

Parameters are named after the indices of torchvision's `features` Sequential, so
the ported ImageNet weights map one to one (see msjax/convert/torchvision.py):

    features_0  : kernel [11, 11, 3, 64],   bias [64]    (stride 4, padding 2)
    features_3  : kernel [5, 5, 64, 192],   bias [192]   (padding 2)
    features_6  : kernel [3, 3, 192, 384],  bias [384]   (padding 1)
    features_8  : kernel [3, 3, 384, 256],  bias [256]   (padding 1)
    features_10 : kernel [3, 3, 256, 256],  bias [256]   (padding 1)

Convolutions are XLA's, gradients by autodiff. On a CPU they run fastest through
XLA's own (Eigen) convolution kernels rather than YNNPACK's, which is the
setting `msjax.runtime` applies on import. Max pooling is written as elementwise maxima of
strided slices (`max_pool`): XLA's reduce-window pooling and its select-and-scatter
gradient are slower on a CPU (bench/RESULTS.md).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (torchvision index, output channels, kernel size, stride, padding, max-pool after)
CONV_LAYERS = (
    (0, 64, 11, 4, 2, True),
    (3, 192, 5, 1, 2, True),
    (6, 384, 3, 1, 1, False),
    (8, 256, 3, 1, 1, False),
    (10, 256, 3, 1, 1, True),
)

# torch.nn.Conv2d's default initialisation: uniform(+-1/sqrt(fan_in)) for the kernel.
_torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _bin_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Averaging weights [out, in] of PyTorch's adaptive pooling along one axis.

    Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)); bins may overlap or
    repeat an input (when out > in), exactly as in ATen's adaptive_avg_pool2d.
    """
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int] = (6, 6)) -> jax.Array:
    """PyTorch-exact adaptive average pooling for any input size.

    Args:
        x: [B, H, W, C].
        output_size: (out_h, out_w).

    Returns:
        [B, out_h, out_w, C].
    """
    rows = jnp.asarray(_bin_matrix(x.shape[1], output_size[0]), x.dtype)
    cols = jnp.asarray(_bin_matrix(x.shape[2], output_size[1]), x.dtype)
    # Separable: each output is the mean of a rectangular bin = row mean of column means.
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """Square NHWC convolution with symmetric zero padding (PyTorch's Conv2d, no bias).

    Args:
        x: [B, H, W, C].
        kernel: [k, k, C, O] (HWIO).
        stride: s, both axes.
        pad: zero padding on every side.

    Returns:
        [B, (H + 2 * pad - k) // s + 1, (W + 2 * pad - k) // s + 1, O].
    """
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _max_pool_axis(x: jax.Array, axis: int, window: int, stride: int) -> jax.Array:
    count = (x.shape[axis] - window) // stride + 1
    taps = [
        jax.lax.slice_in_dim(x, k, k + stride * (count - 1) + 1, stride, axis)
        for k in range(window)
    ]
    return functools.reduce(jnp.maximum, taps)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """Max pooling without padding (PyTorch's MaxPool2d(window, stride)), NHWC.

    Separable: the maximum over columns, then over rows. Where a window holds several
    equal maxima the gradient is shared between them instead of going to one; after
    a ReLU such ties are zeros, whose gradient the ReLU discards either way.

    Args:
        x: [B, H, W, C].
        window: k.
        stride: s.

    Returns:
        [B, (H - k) // s + 1, (W - k) // s + 1, C].
    """
    return _max_pool_axis(_max_pool_axis(x, 2, window, stride), 1, window, stride)


class Conv(nn.Module):
    """`conv2d` with a bias; parameters 'kernel' [k, k, C, O] and 'bias' [O], as nn.Conv.

    Attributes:
        features: O.
        size: k.
        stride: s.
        pad: zero padding on every side.
    """

    features: int
    size: int
    stride: int = 1
    pad: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, H, W, C] to [B, OH, OW, O], computed in the inputs' common dtype."""
        shape = (self.size, self.size, x.shape[-1], self.features)
        kernel = self.param("kernel", _torch_conv_init, shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        return conv2d(x, kernel, self.stride, self.pad) + bias


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features` followed by adaptive average pooling.

    Attributes:
        pool_size: output size of the adaptive average pooling; None returns the raw
            conv map.
    """

    pool_size: tuple[int, int] | None = (6, 6)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Runs the conv stack.

        Args:
            x: images [B, H, W, 3], ImageNet-normalised.

        Returns:
            [B, 6, 6, 256] (pooled) or the conv map [B, H', W', 256] when pool_size is
            None ([B, 7, 11, 256] for a 256x384 input).
        """
        for index, channels, kernel, stride, pad, pool in CONV_LAYERS:
            x = Conv(channels, kernel, stride, pad, name=f"features_{index}")(x)
            x = nn.relu(x)
            if pool:
                x = max_pool(x)
        if self.pool_size is None:
            return x
        return adaptive_avg_pool(x, self.pool_size)
