"""Flax (linen) models: AlexNet features, Bi-LSTM, residual attention, MS-EmoBoost.

All Flax imports of msjax live in this package, so the rest of the code base only
sees `init`/`apply` and plain parameter pytrees.
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
