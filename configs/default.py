"""Defaults shared by every dataset config (paper Table 1 where it speaks).

Dataset configs import this and override a few fields. Any field can be
overridden on the command line, e.g. `--config.optim.learning_rate=3e-5`; the run
checks them all (msjax.experiment.config.ExperimentConfig, which has the same fields).
"""

import dataclasses

import ml_collections

from msjax.features.acoustic import FeatureConfig


def get_config() -> ml_collections.ConfigDict:
    """Returns the base config; not meant to be trained as it is."""
    config = ml_collections.ConfigDict()

    # Data. `data_dir` empty means: the synthetic corpus is generated under the
    # workdir; real datasets must be given.
    config.dataset = "emodb"
    config.data_dir = ""
    config.allow_count_mismatch = False
    # Skip (and list) audio files with truncated WAV headers instead of stopping.
    config.allow_damaged = False
    # "loso" (leave one speaker out), "stratified" (seeded label-stratified
    # k-fold over utterances) or "session" (IEMOCAP leave one session out).
    config.protocol = "loso"
    # 0 = the protocol's natural count (one fold per speaker or session).
    config.num_folds = 0
    # -1 = all folds; k = run fold k only (folds as separate cluster jobs).
    config.fold = -1
    # "heldout": validate on data held out from the training side (default).
    # "test": select the best epoch on the test fold itself, as CA-MSER and the
    # paper do; this inflates results and is only for reproducing them.
    config.validation = "heldout"
    config.seed = 0
    # Trainings per fold, seeded seed, seed + 1, ... (the folds come from `seed` alone);
    # results average over folds and seeds.
    config.seeds = 1

    # Features: msjax.features.acoustic.FeatureConfig's fields and defaults.
    config.features = ml_collections.ConfigDict(dataclasses.asdict(FeatureConfig()))
    config.image_size = (256, 384)
    config.cache_dir = ""  # empty: <workdir>/cache
    # Feature-extraction processes: 0 = one per CPU core, 1 = in the main process.
    config.feature_workers = 0
    config.use_cache = True

    # SSL encoder: a hub id, a local checkpoint directory, or "random:<preset>"
    # (random weights of a named size; for smoke runs with no download).
    config.ssl = ml_collections.ConfigDict(
        dict(
            name="facebook/wav2vec2-base",
            finetune=False,
            freeze_feature_encoder=True,
            mask_time_prob=0.05,
            mask_time_length=10,
            layerdrop=0.1,
            # Fine-tuning: recompute each transformer layer's activations in the backward
            # pass instead of keeping them (less memory, more compute). The policy names
            # what is kept: "nothing_saveable" (least memory),
            # "dots_with_no_batch_dims_saveable" (the linear layers' outputs) or
            # "dots_saveable" (also the attention products).
            remat=False,
            remat_policy="nothing_saveable",
            extract_batch_size=8,
        )
    )

    # Model (MS-EmoBoost head and branches).
    config.model = ml_collections.ConfigDict(
        dict(
            lstm_hidden=256,
            lstm_dropout=0.5,
            branch_dim=128,
            dropout=0.1,
            use_attention=True,
            use_mfcc=True,
            use_spectrogram=True,
            baseline=False,
            # Classifier starts at zero instead of torch's random init: keeps X_enh's
            # ReLU from dying early in training (see MSEmoBoost.zero_init_classifier).
            zero_init_classifier=True,
            # "imagenet": torchvision's ImageNet AlexNet, downloaded and cached on first
            # use (msjax.convert.download); or an msjax params file from bin/port_alexnet.
            alexnet_weights="imagenet",
            # Random AlexNet init (tests, smoke runs); a params file above still wins.
            random_alexnet=False,
        )
    )

    # Optimisation (paper Table 1: Adam, lr 1e-5, cross-entropy).
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-5,
            batch_size=32,
            eval_batch_size=64,
            num_epochs=150,
            patience=20,
            # "" (the paper's plain cross-entropy) or "balanced": each class weighted
            # by its inverse frequency in the training fold, for imbalanced corpora.
            class_weights="",
        )
    )
    # "float32" or "bfloat16" (mixed precision: bf16 compute, f32 master weights).
    config.compute_dtype = "float32"
    config.tsne = False
    return config
