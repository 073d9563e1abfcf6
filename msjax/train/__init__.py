"""Cross-validated training of MS-EmoBoost: `run.train_and_evaluate(config, workdir)`.

    run       the driver: dataset, folds, feature cache, every fold, the reports
    setup     what follows from the config: parameters, shardings, checkpoint metadata
    pipeline  features computed once into the cache and served as fixed-shape batches
    steps     the pure, jitted train and eval steps over a plain-dict state
    loop      one fold: epochs, validation, early stopping, checkpoints, resume
    tsne      t-SNE pictures of pooled SSL features (paper Figs. 7-8)
"""
