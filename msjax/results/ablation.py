"""The ablation table: each variant's metrics and its paired difference from the full model.

Built from the fold results (fold_XX/result.json) of each variant's run directory,
so it needs only finished folds, not the process that trained them. Written as
ablation.txt (the printed table), ablation.csv and ablation.json.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from msjax.errors import DataError
from msjax.io.files import write_json, write_text
from msjax.io.rundir import RunDir
from msjax.results import metrics as M
from msjax.results import report
from msjax.results.stats import PairedDifference, difference_summary

REFERENCE = "full"
# variant -> model overrides; each trains in <workdir>/<variant>/, in this order.
VARIANTS = {
    "full": {},
    "no_attention": {"use_attention": False},
    "no_mfcc": {"use_mfcc": False},
    "no_spectrogram": {"use_spectrogram": False},
    "baseline": {"baseline": True},
}
# Table column -> result.json key, for mean ± std over folds and for paired differences.
SUMMARY_METRICS = (("WA", "wa"), ("UA", "ua"), ("F1", "f1"))
PAIRED_METRICS = (("UA", "ua"), ("WA", "wa"))
_P_FIELDS = (("p (t)", "t_pvalue"), ("p (W)", "wilcoxon_pvalue"))


def read_fold_results(run_dir: Path) -> list[dict]:
    """The result.json of every finished fold (and seed: msjax.io.rundir) under `run_dir`,
    in fold order."""
    results = []
    for path in RunDir(Path(run_dir)).result_files():
        try:
            result = json.loads(path.read_text())
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        keys = ("fold", *(k for _, k in SUMMARY_METRICS))
        if not isinstance(result, dict) or not all(is_finite_number(result.get(k)) for k in keys):
            raise DataError(f"{path}: not a fold result (needs finite {', '.join(keys)})")
        results.append(result)
    return results


def is_finite_number(value: object) -> bool:
    """An int or float (not a bool) that is finite: a metric as result.json holds it."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def paired_differences(
    reference: Sequence[Mapping], variant: Sequence[Mapping], key: str
) -> PairedDifference:
    """`variant` - `reference` in metric `key`, paired by fold (and seed), in points.

    Results are fold result dicts (result.json); an optional "seed" field pairs
    several seeds of one fold, whose differences are averaged per fold. Only the
    (fold, seed) pairs both sides have are compared.
    """
    ref = {(r["fold"], r.get("seed")): 100 * float(r[key]) for r in reference}
    per_fold: dict[int, list[float]] = {}
    for r in variant:
        pair = (r["fold"], r.get("seed"))
        if pair in ref:
            per_fold.setdefault(pair[0], []).append(100 * float(r[key]) - ref[pair])
    if not per_fold:
        raise DataError(f"no fold of the variant pairs with a fold of the reference ({key})")
    return difference_summary(np.array([np.mean(per_fold[k]) for k in sorted(per_fold)]))


def ablation_rows(results: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """One row per variant (insertion order) from its fold results.

    Args:
        results: variant name -> its fold result dicts; must include "full".

    Returns:
        Rows with "variant", "folds", (mean, std) in points for "WA", "UA" and
        "F1", and for every variant but the full model "paired": {"UA": ..., "WA":
        ...}, each a PairedDifference (as a dict) of variant - full in points.
    """
    if REFERENCE not in results:
        raise DataError(f"no {REFERENCE!r} results to compare the variants with")
    rows = []
    for variant, folds in results.items():
        row = {"variant": variant, "folds": len({r["fold"] for r in folds})}
        for name, key in SUMMARY_METRICS:
            mean, std = M.summarize([100 * float(r[key]) for r in folds])
            row[name] = (mean, std)
        if variant != REFERENCE:
            row["paired"] = {
                name: dataclasses.asdict(paired_differences(results[REFERENCE], folds, key))
                for name, key in PAIRED_METRICS
            }
        rows.append(row)
    return rows


def ablation_table(rows: Sequence[Mapping]) -> str:
    """The printed table of `ablation_rows`, with a line saying what Δ and p are."""
    cells = []
    for row in rows:
        cell = {k: row[k] for k in ("variant", "folds", *(n for n, _ in SUMMARY_METRICS))}
        for name, diff in row.get("paired", {}).items():
            cell[f"Δ{name}"] = diff["mean"]
            cell[f"{name} 95% CI"] = report.format_interval(diff["ci_low"], diff["ci_high"])
            for label, field in _P_FIELDS:
                cell[f"{name} {label}"] = report.format_p_value(diff[field])
        cells.append(cell)
    columns = ["variant", "folds", *(n for n, _ in SUMMARY_METRICS)]
    for name, _ in PAIRED_METRICS:
        columns += [f"Δ{name}", f"{name} 95% CI", *(f"{name} {label}" for label, _ in _P_FIELDS)]
    note = (
        f"Δ: variant - {REFERENCE} in points, mean over folds paired by fold (seeds averaged); "
        "95% CI: Student t; p (t): paired t-test; p (W): exact Wilcoxon signed-rank."
    )
    return report.format_table(cells, columns) + "\n\n" + note


def table_line(workdir: Path) -> str:
    """The line that ends an ablation: where its table files are."""
    rundir = RunDir(Path(workdir))
    also = f"{rundir.ablation_csv.name}, {rundir.ablation_json.name}"
    return f"ablation table: {rundir.ablation_txt} (also {also})"


def write_ablation(rows: Sequence[Mapping], workdir: Path) -> str:
    """Writes ablation.txt, ablation.csv and ablation.json; returns the table."""
    rundir = RunDir(Path(workdir))
    table = ablation_table(rows)
    write_text(table + "\n", rundir.ablation_txt)
    fields = [field.name for field in dataclasses.fields(PairedDifference)]
    header = ["variant", *(f"{key}_{s}" for _, key in SUMMARY_METRICS for s in ("mean", "std"))]
    header += ["folds"]
    header += [f"{key}_diff_{f}" for _, key in PAIRED_METRICS for f in fields]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        paired = row.get("paired", {})
        summary = [v for name, _ in SUMMARY_METRICS for v in row[name]]
        diffs = [paired[m][k] if paired else "" for m, _ in PAIRED_METRICS for k in fields]
        writer.writerow([row["variant"], *summary, row["folds"], *diffs])
    write_text(out.getvalue(), rundir.ablation_csv)
    write_json(rows, rundir.ablation_json)
    return table
