"""What a run reports: metrics, paired statistics, tables, figures, summaries.

    metrics   WA, UA, macro-F1, confusion matrices
    stats     paired comparison of two variants over the same folds
    report    confusion CSV, text tables, the environment record
    plots     confusion, t-SNE and timeline figures
    summary   a run's results.json from its finished folds
    ablation  the ablation table of variant run directories
"""
