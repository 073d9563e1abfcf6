"""What msjax keeps on disk: atomic files, npz arrays, locks, checkpoints.

    files       atomic writes, strict JSON
    npz         numpy archives read without pickle
    lock        one writer per run directory
    checkpoint  orbax checkpoints of a fold, with their manifest
"""
