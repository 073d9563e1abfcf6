"""The embedded synthetic corpus: the quickstart, runs anywhere with no download.

    bin/train                      # = bin/train --dataset=synthetic

msjax generates the corpus itself (numpy source-filter voices whose pitch,
jitter, tempo, energy and spectral tilt depend on the emotion; EMODB layout)
under <workdir>/corpus. With no pretrained weights to load, the SSL encoder and
AlexNet are random-initialised, so what is learned comes from the MFCC and
spectrogram branches. Small sizes keep it to minutes on a 2-core CPU.
"""

import ml_collections

from msjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "synthetic"
    config.protocol = "loso"
    config.synthetic = ml_collections.ConfigDict(
        dict(seed=0, num_speakers=4, utterances_per_emotion=4)
    )
    config.ssl.name = "random:tiny"
    config.model.random_alexnet = True
    config.image_size = (128, 192)
    config.model.lstm_hidden = 64
    config.optim.learning_rate = 1e-3
    config.optim.batch_size = 16
    config.optim.num_epochs = 12
    config.optim.patience = 6
    return config
