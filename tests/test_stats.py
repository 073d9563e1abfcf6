"""Paired comparison (msjax/results/stats.py) against scipy, and the ablation table built on it."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as st

from msjax.errors import DataError
from msjax.results import ablation
from msjax.results.stats import difference_summary, paired_difference, wilcoxon_pvalue

# Per-fold UA of two variants on 8 folds (fixed numbers, no ties, no zero difference).
FULL = np.array([0.712, 0.655, 0.803, 0.721, 0.684, 0.598, 0.770, 0.731])
VARIANT = np.array([0.690, 0.667, 0.751, 0.700, 0.689, 0.561, 0.745, 0.702])


def test_t_statistics_match_scipy():
    got = paired_difference(FULL, VARIANT)
    want = st.ttest_rel(VARIANT, FULL)
    ci = want.confidence_interval(0.95)
    assert got.n == 8
    assert got.mean == pytest.approx(np.mean(VARIANT - FULL), abs=1e-12)
    assert got.t_pvalue == pytest.approx(want.pvalue, rel=1e-9)
    assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # The interval from its definition, with t.ppf.
    d = VARIANT - FULL
    half = st.t.ppf(0.975, 7) * d.std(ddof=1) / math.sqrt(8)
    assert (got.ci_low, got.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    wider = paired_difference(FULL, VARIANT, confidence=0.99)
    assert wider.ci_low < got.ci_low and wider.ci_high > got.ci_high


def test_wilcoxon_matches_scipy_exact_without_ties():
    got = paired_difference(FULL, VARIANT).wilcoxon_pvalue
    assert got == pytest.approx(st.wilcoxon(VARIANT, FULL, method="exact").pvalue, rel=1e-12)
    # Five differences of one sign: the smallest two-sided p-value, 2 / 2^5.
    assert wilcoxon_pvalue(np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(0.0625)


@pytest.mark.parametrize(
    "d",
    [
        [1.0, 2.0, 2.0, 4.0, -5.0],  # one tie
        [0.5, 0.5, 0.5, -0.5, 1.0, 1.0, 2.0, -3.0, 4.0],  # ties across signs
        [0.0, 0.0, 1.0, -2.0, 3.0, 3.0, 4.0],  # zeros and a tie
    ],
)
def test_wilcoxon_with_ties_and_zeros_is_scipys_exact_permutation(d):
    # scipy enumerates all 2^n sign flips for n <= 13 (n_resamples 9999 >= 2^n).
    nonzero = [v for v in d if v != 0]
    want = st.wilcoxon(nonzero, method=st.PermutationMethod()).pvalue
    assert wilcoxon_pvalue(np.array(d)) == pytest.approx(want, rel=1e-12)


def test_float_noise_still_ties():
    # 0.7 - 0.6 and 0.8 - 0.7 differ in the last bits; as accuracy gaps they are one tie.
    noisy = np.array([-(0.7 - 0.6), 0.8 - 0.7, 0.3, 0.2, 0.5, 0.4])
    clean = np.array([-0.1, 0.1, 0.3, 0.2, 0.5, 0.4])
    assert noisy[0] != -noisy[1]
    got = difference_summary(noisy)
    assert got == difference_summary(clean)
    want = st.wilcoxon(clean, method=st.PermutationMethod()).pvalue
    assert got.wilcoxon_pvalue == pytest.approx(want, rel=1e-12)


def test_seeds_are_averaged_within_each_fold():
    rng = np.random.default_rng(0)
    ref, var = rng.uniform(0.5, 0.8, (6, 3)), rng.uniform(0.5, 0.8, (6, 3))
    got = paired_difference(ref, var)
    want = difference_summary((var - ref).mean(axis=1))
    assert got == want and got.n == 6
    assert got.t_pvalue == pytest.approx(st.ttest_rel(var.mean(1), ref.mean(1)).pvalue)


def test_one_fold_has_a_mean_and_nothing_to_test():
    got = difference_summary(np.array([0.03]))
    assert got.n == 1 and got.mean == pytest.approx(0.03)
    assert all(math.isnan(v) for v in (got.ci_low, got.ci_high, got.t_pvalue, got.wilcoxon_pvalue))


def test_all_zero_differences_are_no_evidence():
    got = paired_difference(FULL, FULL.copy())
    assert (got.mean, got.ci_low, got.ci_high) == (0.0, 0.0, 0.0)
    assert got.t_pvalue == 1.0 and got.wilcoxon_pvalue == 1.0


def test_a_constant_gap_is_the_t_limit():
    got = paired_difference(FULL, FULL + 0.02)
    assert got.mean == pytest.approx(0.02) and got.ci_low == got.ci_high == got.mean
    assert got.t_pvalue == 0.0
    assert got.wilcoxon_pvalue == pytest.approx(2 / 2**8)  # all 8 ranks tied, one sign


@pytest.mark.parametrize(
    "ref,var,message",
    [
        (np.zeros(3), np.zeros(4), "one shape"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "one shape"),
        (np.zeros(0), np.zeros(0), "K >= 1"),
        (np.array([0.1, np.nan]), np.array([0.2, 0.3]), "non-finite"),
    ],
)
def test_bad_input_is_refused(ref, var, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(ref, var)


def write_fold(run_dir, fold, wa, ua, f1=0.5):
    path = run_dir / f"fold_{fold:02d}" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fold": fold, "wa": wa, "ua": ua, "f1": f1, "best_epoch": 1}))


def test_ablation_table_has_paired_columns_from_fold_results(tmp_path):
    wa_full = FULL + 0.01
    wa_var = VARIANT[::-1] + 0.003
    for k in range(8):
        write_fold(tmp_path / "full", k, wa_full[k], FULL[k])
        write_fold(tmp_path / "no_mfcc", k, wa_var[k], VARIANT[k])
    results = {v: ablation.read_fold_results(tmp_path / v) for v in ("full", "no_mfcc")}
    rows = ablation.ablation_rows(results)
    table = ablation.write_ablation(rows, tmp_path)

    ua, wa = st.ttest_rel(100 * VARIANT, 100 * FULL), st.ttest_rel(100 * wa_var, 100 * wa_full)
    ua_ci = ua.confidence_interval()
    paired = rows[1]["paired"]
    assert paired["UA"]["n"] == paired["WA"]["n"] == 8
    assert paired["UA"]["mean"] == pytest.approx(100 * np.mean(VARIANT - FULL))
    assert paired["UA"]["t_pvalue"] == pytest.approx(ua.pvalue)
    assert (paired["UA"]["ci_low"], paired["UA"]["ci_high"]) == pytest.approx(ua_ci)
    assert paired["WA"]["t_pvalue"] == pytest.approx(wa.pvalue)
    want_w = st.wilcoxon(100 * VARIANT, 100 * FULL, method="exact").pvalue
    assert paired["UA"]["wilcoxon_pvalue"] == pytest.approx(want_w)
    assert "paired" not in rows[0] and rows[0]["UA"][0] == pytest.approx(100 * FULL.mean())

    lines = table.splitlines()
    header, full_line, variant_line = lines[0], lines[2], lines[3]
    for column in ("ΔUA", "UA 95% CI", "UA p (t)", "UA p (W)", "ΔWA", "WA p (t)"):
        assert column in header
    assert f"{100 * np.mean(VARIANT - FULL):.2f}" in variant_line
    assert f"[{ua_ci.low:.2f}, {ua_ci.high:.2f}]" in variant_line
    assert f"{ua.pvalue:.3f}" in variant_line and f"{wa.pvalue:.3f}" in variant_line
    assert full_line.split()[-1] == "-"
    assert (tmp_path / "ablation.txt").read_text() == table + "\n"

    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved[1]["paired"]["UA"]["t_pvalue"] == pytest.approx(ua.pvalue)
    with open(tmp_path / "ablation.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert float(csv_rows[1]["ua_diff_wilcoxon_pvalue"]) == pytest.approx(want_w)
    assert csv_rows[0]["ua_diff_mean"] == "" and float(csv_rows[0]["ua_mean"]) == pytest.approx(
        100 * FULL.mean()
    )


def test_ablation_pairs_only_common_folds_and_seeds():
    # The full model lacks fold 1's seed 1; the variant lacks fold 3 and fold 2's seed 1.
    # The variant's gap to the full model is (fold + 1) points, for every seed.
    runs = [{"fold": k, "seed": s, "wa": 0.5 + 0.01 * k + 0.001 * s, "ua": 0.5, "f1": 0.5}
            for k in range(4) for s in range(2)]
    full = [r for r in runs if (r["fold"], r["seed"]) != (1, 1)]
    var = [dict(r, wa=r["wa"] - 0.01 * (r["fold"] + 1)) for r in runs
           if r["fold"] < 3 and (r["fold"], r["seed"]) != (2, 1)]
    got = ablation.ablation_rows({"full": full, "no_attention": var})[1]["paired"]["WA"]
    assert got["n"] == 3 and got["mean"] == pytest.approx(-2.0)
    assert got["t_pvalue"] == pytest.approx(st.ttest_rel([-1.0, -2.0, -3.0], [0, 0, 0]).pvalue)


def test_damaged_fold_result_names_the_file(tmp_path):
    write_fold(tmp_path / "full", 0, 0.5, 0.5)
    (tmp_path / "full" / "fold_01").mkdir()
    (tmp_path / "full" / "fold_01" / "result.json").write_text('{"fold": 1, "wa": ')
    with pytest.raises(DataError, match="fold_01/result.json: not valid JSON"):
        ablation.read_fold_results(tmp_path / "full")
    (tmp_path / "full" / "fold_01" / "result.json").write_text('{"fold": 1, "wa": null}')
    with pytest.raises(DataError, match="fold_01/result.json: not a fold result"):
        ablation.read_fold_results(tmp_path / "full")
    with pytest.raises(DataError, match="'full'"):
        ablation.ablation_rows({"no_mfcc": []})
