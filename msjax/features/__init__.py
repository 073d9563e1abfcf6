"""From audio files to the arrays the model reads.

    audio      any WAV/FLAC to mono 16 kHz float32
    acoustic   MFCC, log spectrogram, 3 s segments (`FeatureConfig`)
    image      spectrogram segments to AlexNet input images
    cache      content-addressed on-disk cache of per-utterance arrays
    pool       a corpus's features over one worker process per core
    streaming  segments of recordings of any length, window by window
    store      a run's features, computed once into the cache and served as batches
"""
