"""EMOVO, 7 classes, seeded label-stratified 10-fold CV (the paper's protocol).

    bin/train --dataset=emovo --data_dir=/path/to/EMOVO --folds=10

Speaker-independent 6-fold LOSO: add `--config.protocol=loso`.
Paper (Table 2, wav2vec2-base, fine-tuned): WA 86.88, UA 87.51.
"""

import ml_collections

from msjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "emovo"
    config.protocol = "stratified"
    config.num_folds = 10
    config.optim.batch_size = 16
    config.optim.num_epochs = 150
    config.optim.patience = 20
    return config
