"""A run's summary from its finished folds: results.json, confusion.{csv,png}, the table.

A whole run writes it when its last fold ends; `bin/summarize` (`summarize_workdir`)
writes it from whatever folds have finished (fold jobs sharing a workdir, an
interrupted run), and for an ablation workdir each variant's and the ablation table.
Both read only the workdir's files (config.json, folds.json and each run's
result.json), so for the same finished folds they write the same bytes.

Seeds: with one seed a fold trains once; with `seeds` = S > 1 it trains S times, for
seed = config.seed, ..., config.seed + S - 1 (the folds themselves always come from
config.seed), each in its own directory (msjax.io.rundir.RunDir.runs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from msjax.data.folds import read_folds_json
from msjax.errors import DataError, UsageError
from msjax.io.files import write_json
from msjax.io.rundir import FOLD_RESULTS, RunDir
from msjax.results import ablation, plots, report
from msjax.results import metrics as M
from msjax.results.ablation import SUMMARY_METRICS, is_finite_number


def run_seeds(config: Mapping) -> list[int]:
    """The training seeds of every fold: config.seed onwards, `seeds` of them."""
    return [config["seed"] + s for s in range(config.get("seeds", 1))]


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a DataError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a JSON object")
    return data


def finished_runs(workdir: Path) -> tuple[list[dict], list[str]]:
    """The result.json of every finished training in fold and seed order, and the
    directories (relative to `workdir`) of those not finished yet."""
    workdir = Path(workdir)
    rundir = RunDir(workdir)
    seeds = run_seeds(read_json(rundir.config))
    done, missing = [], []
    for fold in read_folds_json(rundir.folds):
        for _, run in rundir.runs(fold.index, seeds):
            if run.finished():
                done.append(_fold_result(run.result))
            else:
                missing.append(run.root.relative_to(workdir).as_posix())
    return done, missing


def _fold_result(path: Path) -> dict:
    """A training's result.json, or a DataError naming what it lacks."""
    result = read_json(path)
    lacking = [k for k in ("fold", "test_speakers", "per_class_recall", "confusion")
               if k not in result]
    lacking += [k for _, k in SUMMARY_METRICS if not is_finite_number(result.get(k))]
    if lacking:
        raise DataError(f"{path}: not a fold result (lacks finite {', '.join(lacking)})")
    return result


def write_summary(workdir: Path) -> tuple[dict, str]:
    """Merges the finished folds of `workdir` into results.json and confusion.{csv,png}.

    Means and stds run over every finished (fold, seed); the pooled confusion matrix
    sums their test predictions. results.json's "missing" lists the trainings not
    finished yet, "seconds" sums the finished ones' training time.

    Returns:
        results.json's content and the printed per-fold table.

    Raises:
        DataError: no fold has finished, or a file of the run is unreadable.
    """
    workdir = Path(workdir)
    rundir = RunDir(workdir)
    config = read_json(rundir.config)
    runs, missing = finished_runs(workdir)
    if not runs:
        raise DataError(f"{workdir}: no fold has finished (no {FOLD_RESULTS})")
    labels = list(runs[0]["per_class_recall"])  # written in label order
    num_folds = len(read_folds_json(rundir.folds))
    pooled = np.sum([np.array(r["confusion"]) for r in runs], axis=0)
    summary = {k: M.summarize([r[k] for r in runs]) for _, k in SUMMARY_METRICS}
    results = {
        "dataset": runs[0].get("dataset", config["dataset"]),
        "labels": labels,
        "protocol": config["protocol"],
        "validation": config["validation"],
        "num_folds": num_folds,
        "seed": config["seed"],
        "seeds": run_seeds(config),
        "ssl": config["ssl"]["name"],
        "finetune_ssl": config["ssl"]["finetune"],
        "model": config["model"],
        "folds": [
            {k: r.get(k) for k in ("fold", "seed", "test_speakers", "best_epoch", "wa", "ua",
                                   "f1", "per_class_recall")}
            for r in runs
        ],
        "missing": missing,
        "mean": {k: v[0] for k, v in summary.items()},
        "std": {k: v[1] for k, v in summary.items()},
        "pooled": {
            "wa": M.weighted_accuracy(pooled),
            "ua": M.unweighted_accuracy(pooled),
            "f1": M.macro_f1(pooled),
            "per_class_recall": dict(zip(labels, M.per_class_recall(pooled).tolist())),
            "confusion": pooled.tolist(),
        },
        "seconds": sum(r.get("seconds", 0.0) for r in runs),
        "environment": report.environment_info(),
    }
    write_json(results, rundir.results)
    report.write_confusion_csv(pooled, labels, rundir.confusion_csv)
    done = f"{len(runs)} of {len(runs) + len(missing)} trainings" if missing else None
    plots.plot_confusion_png(
        pooled, labels, rundir.confusion_png,
        title=f"MS-EmoBoost on {results['dataset']} ({done or f'{num_folds} folds'})",
    )
    return results, _table(runs, summary)


def _table(runs: list[dict], summary: dict) -> str:
    seeded = len({r.get("seed") for r in runs}) > 1
    rows = [
        {"fold": r["fold"], "seed": r.get("seed"), "test": ",".join(r["test_speakers"]) or "-",
         **{name: 100 * r[k] for name, k in SUMMARY_METRICS}}
        for r in runs
    ]
    rows.append({"fold": "mean ± std", "test": "", **{
        name: (100 * summary[k][0], 100 * summary[k][1]) for name, k in SUMMARY_METRICS}})
    columns = ["fold", *(["seed"] if seeded else []), "test", *(n for n, _ in SUMMARY_METRICS)]
    return report.format_table(rows, columns)


def summarize_workdir(workdir: Path) -> str:
    """Writes the summary of a bin/train workdir, or of each variant of a bin/ablate
    workdir and its ablation table (`ablation.write_ablation`); returns what to print,
    naming the trainings not finished yet.

    Raises:
        UsageError: `workdir` holds no run.
        DataError: no fold has finished, or a file of the run is unreadable.
    """
    workdir = Path(workdir)
    rundir = RunDir(workdir)
    if rundir.config.exists():
        results, table = write_summary(workdir)
        return table + "\n" + results_line(workdir, results)
    variants = [v for v in ablation.VARIANTS if rundir.variant(v).config.exists()]
    if not variants:
        raise UsageError(
            f"{workdir}: no run here (neither {rundir.config.name} nor ablation variants)"
        )
    lines, results = [], {}
    for variant in variants:
        root = rundir.variant(variant).root
        if not finished_runs(root)[0]:
            lines.append(f"{variant}: no fold has finished")
            continue
        summary, _ = write_summary(root)
        results[variant] = ablation.read_fold_results(root)
        lines.append(results_line(root, summary))
    if ablation.REFERENCE in results:
        table = ablation.write_ablation(ablation.ablation_rows(results), workdir)
        lines += ["", table, ablation.table_line(workdir)]
    return "\n".join(lines)


def results_line(run_dir: Path, results: Mapping) -> str:
    """The line that ends a run: where results.json is, the mean ± std of each metric
    over the trainings (in points) and which are missing."""
    metrics = "  ".join(
        f"{name} {100 * results['mean'][key]:.2f} ± {100 * results['std'][key]:.2f}"
        for name, key in SUMMARY_METRICS
    )
    done = f"{len(results['folds'])} trainings"
    done += f", missing {', '.join(results['missing'])}" if results["missing"] else ", all finished"
    return f"results: {RunDir(Path(run_dir)).results}  {metrics}  ({done})"
