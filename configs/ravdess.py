"""RAVDESS speech, 8 classes, 24-fold leave-one-actor-out.

    bin/train --dataset=ravdess --data_dir=/path/to/ravdess    # holds Actor_01 ... Actor_24
"""

import ml_collections

from msjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "ravdess"
    config.protocol = "loso"
    return config
