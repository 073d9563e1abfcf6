"""CREMA-D, 6 classes, seeded stratified 10-fold.

    bin/train --dataset=cremad --data_dir=/path/to/CREMA-D     # holds AudioWAV/
    bin/train --dataset=cremad --data_dir=... --config.protocol=loso   # 91 folds, one per actor

Stratified folds share actors between training and test (speaker-dependent); loso is
speaker-independent at 91 folds.
"""

import ml_collections

from msjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "cremad"
    config.protocol = "stratified"
    config.num_folds = 10
    return config
