"""EMODB, 7 classes, 10-fold leave-one-speaker-out.

    bin/train --dataset=emodb --data_dir=/path/to/emodb

Paper (Table 2, wav2vec2-base, fine-tuned): WA 92.45, UA 92.62.
"""

import ml_collections

from msjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "emodb"
    config.protocol = "loso"
    config.optim.batch_size = 32
    config.optim.num_epochs = 150
    config.optim.patience = 20
    return config
