"""Port a bidirectional torch.nn.LSTM state dict to msjax BiLSTM parameters.

torch.nn.LSTM(bidirectional=True, batch_first=True) stores, per layer k and per
direction (suffix "" forward, "_reverse" backward):

    weight_ih_l{k}{suffix} [4H, in]   weight_hh_l{k}{suffix} [4H, H]
    bias_ih_l{k}{suffix}   [4H]       bias_hh_l{k}{suffix}   [4H]

with gate rows in the order i, f, g, o. msjax keeps the same gate order along the
columns of fused kernels, so each weight is only transposed, and the two biases,
which PyTorch always adds together, become one:

    layer_{k}/{forward|backward}/input_kernel  = weight_ih.T
    layer_{k}/{forward|backward}/hidden_kernel = weight_hh.T
    layer_{k}/{forward|backward}/bias          = bias_ih + bias_hh
"""

from collections.abc import Mapping

import numpy as np

from msjax.convert import mismatch
from msjax.errors import CheckpointError
from msjax.models.bilstm import DIRECTIONS

_SUFFIX = {"forward": "", "backward": "_reverse"}


def _array(tensor: object) -> np.ndarray:
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor, np.float32)


def port_lstm(
    state_dict: Mapping[str, object],
    num_layers: int = 2,
    prefix: str = "",
    source: str = "state dict",
) -> dict:
    """Converts a bidirectional torch.nn.LSTM state dict to BiLSTM params.

    Args:
        state_dict: the LSTM's `state_dict()` (torch tensors or arrays); keys of
            other modules are allowed when `prefix` selects the LSTM's keys.
        num_layers: expected number of layers.
        prefix: key prefix of the LSTM in a larger state dict, e.g. "lstm_mfcc.".
        source: name used in error messages.

    Returns:
        {'layer_0': {'forward': {'input_kernel', 'hidden_kernel', 'bias'},
        'backward': {...}}, 'layer_1': ...} as float32 NumPy arrays.

    Raises:
        CheckpointError: a tensor is missing or unexpected, or shapes disagree.
    """
    names = {
        f"{prefix}{kind}_l{k}{_SUFFIX[d]}"
        for k in range(num_layers)
        for d in DIRECTIONS
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    present = {k for k in state_dict if k.startswith(prefix)}
    mismatch.check(
        source, f"not a {num_layers}-layer bidirectional LSTM",
        missing=sorted(names - present), unexpected=sorted(present - names),
    )
    params: dict = {}
    for k in range(num_layers):
        layer = params[f"layer_{k}"] = {}
        for d in DIRECTIONS:
            key = f"l{k}{_SUFFIX[d]}"
            w_ih = _array(state_dict[f"{prefix}weight_ih_{key}"])
            w_hh = _array(state_dict[f"{prefix}weight_hh_{key}"])
            b_ih = _array(state_dict[f"{prefix}bias_ih_{key}"])
            b_hh = _array(state_dict[f"{prefix}bias_hh_{key}"])
            gates, hidden = w_hh.shape
            in_ok = k == 0 or w_ih.shape[1] == 2 * hidden  # deeper layers read both directions
            if (
                gates != 4 * hidden
                or w_ih.shape[0] != gates
                or not in_ok
                or b_ih.shape != (gates,)
                or b_hh.shape != (gates,)
            ):
                raise CheckpointError(
                    f"{source}: {prefix}*_{key} shapes {w_ih.shape}, {w_hh.shape}, "
                    f"{b_ih.shape}, {b_hh.shape} are not an LSTM's [4H, in], [4H, H], [4H]"
                )
            layer[d] = {
                "input_kernel": np.ascontiguousarray(w_ih.T),
                "hidden_kernel": np.ascontiguousarray(w_hh.T),
                "bias": b_ih + b_hh,
            }
    return params
