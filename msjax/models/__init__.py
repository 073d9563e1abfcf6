"""Flax (linen) models: AlexNet features, Bi-LSTM, residual attention, MS-EmoBoost.

Every model is used through linen's pure `init`/`apply` with plain dict parameter trees.
"""

from msjax.models.alexnet import AlexNetFeatures, adaptive_avg_pool
from msjax.models.attention import Linear, ResidualSelfAttention
from msjax.models.bilstm import BiLSTM
from msjax.models.emoboost import (
    MSEmoBoost,
    dummy_batch,
    frame_l2_normalize,
    from_configs,
    replace_alexnet,
)

__all__ = [
    "AlexNetFeatures",
    "BiLSTM",
    "Linear",
    "MSEmoBoost",
    "ResidualSelfAttention",
    "adaptive_avg_pool",
    "dummy_batch",
    "frame_l2_normalize",
    "from_configs",
    "replace_alexnet",
]
