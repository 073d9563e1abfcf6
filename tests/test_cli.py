"""End to end: bin/train, bin/ablate, bin/extract and bin/predict as a user runs them
(tiny runs; see conftest.py)."""

import csv
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY, bin_command, cpu_env, ok, predicts_as_recorded, products, run


def test_train_writes_every_artifact(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["optim"]["num_epochs"] == 2 and config["dataset"] == "synthetic"
    folds = json.loads((trained / "folds.json").read_text())
    assert len(folds["folds"]) == 2
    results = json.loads((trained / "results.json").read_text())
    assert results["protocol"] == "stratified" and results["num_folds"] == 2
    assert results["seed"] == 0 and results["labels"][0] == "anger"
    env = results["environment"]
    assert env["jax"] and env["flax"] and env["optax"] and "git_revision" in env
    for key in ("wa", "ua", "f1"):
        assert 0.0 <= results["mean"][key] <= 1.0
    assert set(results["pooled"]["per_class_recall"]) == set(results["labels"])
    # The pooled confusion matrix holds every utterance exactly once.
    assert np.sum(results["pooled"]["confusion"]) == 42
    for fold in ("fold_00", "fold_01"):
        result = json.loads((trained / fold / "result.json").read_text())
        assert result["epochs_run"] == 2 and len(result["history"]) == 2
        with open(trained / fold / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 21
        probs = np.array([[float(r[f"p_{n}"]) for n in results["labels"]] for r in rows])
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        assert (trained / fold / "confusion.csv").exists()
        assert any((trained / fold / "best").iterdir())
        assert any((trained / fold / "latest").iterdir())
    assert (trained / "confusion.csv").exists()
    for picture in ("confusion.png", "tsne_plain.png", "tsne_enhanced.png"):
        assert (trained / picture).read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_finished_folds(trained):
    before = (trained / "fold_00" / "result.json").read_text()
    done = ok(run("train", f"--workdir={trained}", *TINY))
    assert "epoch 1" not in done.stderr  # nothing was trained again
    assert (trained / "fold_00" / "result.json").read_text() == before


def test_changed_config_refuses_the_workdir(trained):
    done = run("train", f"--workdir={trained}", *TINY, "--config.optim.learning_rate=0.5")
    assert done.returncode == 2
    assert "different config (optim.learning_rate: 0.001 -> 0.5)" in (
        done.stderr.strip().splitlines()[-1]
    )


def test_resume_refuses_flags_that_change_the_run(trained):
    done = run("train", f"--workdir={trained}", "--resume", "--config.optim.learning_rate=1")
    assert done.returncode == 2
    assert "drop --config.optim.learning_rate" in done.stderr


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - start < timeout
        time.sleep(0.2)


def test_sigkill_then_resume_matches_an_uninterrupted_run(trained, tmp_path):
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        bin_command("train", f"--workdir={workdir}", *TINY),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cpu_env(),
    )
    try:
        # Fold 0 saved its first epoch: kill it in the middle of the fold.
        _wait_for(workdir / "fold_00" / "latest" / "1", proc)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (workdir / "fold_00" / "result.json").exists()
    done = ok(run("train", f"--workdir={workdir}", "--resume"))  # the run's own config
    assert "fold 0: resuming after epoch" in done.stderr
    for fold in ("fold_00", "fold_01"):
        resumed = json.loads((workdir / fold / "result.json").read_text())
        reference = json.loads((trained / fold / "result.json").read_text())
        assert resumed["history"] == reference["history"]
        assert (resumed["wa"], resumed["ua"]) == (reference["wa"], reference["ua"])
        assert (workdir / fold / "predictions.csv").read_text() == (
            trained / fold / "predictions.csv"
        ).read_text()


def test_predict_reports_bad_files_and_goes_on(trained, tmp_path):
    corpus = trained / "corpus" / "wav"
    clips = sorted(corpus.glob("*.wav"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for clip in clips:
        (folder / clip.name).write_bytes(clip.read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    sf.write(folder / "silent.wav", np.zeros(800, np.float32), 8000)  # short, all silent
    out = tmp_path / "preds.jsonl"
    done = run("predict", f"--checkpoint={trained / 'fold_00'}", f"--input={folder}",
               f"--output={out}")
    assert done.returncode == 3  # some file failed
    assert "broken.wav" in done.stderr
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {c.name for c in clips} | {"broken.wav", "silent.wav"}
    assert records["broken.wav"]["status"] == "error" and "broken.wav" in records[
        "broken.wav"]["error"]
    assert "only 0.1 s of audio" in records["silent.wav"]["error"]
    assert "digital silence" in records["silent.wav"]["error"]
    for name in [c.name for c in clips] + ["silent.wav"]:
        record = records[name]
        # Predicted all the same; a 0.1 s silent clip with the reasons not to trust it.
        assert record["status"] == ("warning" if name == "silent.wav" else "ok"), record
        probs = record["probabilities"]
        assert record["label"] == max(probs, key=probs.get)
        assert abs(sum(probs.values()) - 1.0) < 1e-4


def test_predict_matches_the_fold_predictions(trained):
    """A checkpoint predicts alone what the run recorded for its test utterances."""
    predicts_as_recorded(trained)


def test_finetune_trains_the_encoder_and_its_checkpoint_predicts(tmp_path):
    """--finetune_ssl: the encoder runs inside the step; the checkpoint carries it."""
    ok(run("train", f"--workdir={tmp_path}", "--finetune_ssl", "--fold=0", *TINY,
           "--config.optim.num_epochs=1"))
    assert not (tmp_path / "results.json").exists()  # fold 1 has not run
    with open(tmp_path / "fold_00" / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    clip = tmp_path / "corpus" / "wav" / f"{row['uid']}.wav"
    done = ok(run("predict", f"--checkpoint={tmp_path / 'fold_00'}", f"--input={clip}"))
    got = next(csv.DictReader(done.stdout.splitlines()))
    labels = [k[2:] for k in row if k.startswith("p_")]
    np.testing.assert_allclose(
        [float(got[f"p_{n}"]) for n in labels], [float(row[f"p_{n}"]) for n in labels],
        atol=1e-4,
    )
    assert not list((tmp_path / "cache").glob("ssl"))  # nothing frozen was extracted

    # In bfloat16 the encoder inside the model computes in bf16 too, close to float32.
    done = ok(run("predict", f"--checkpoint={tmp_path / 'fold_00'}", f"--input={clip}",
                  "--compute_dtype=bfloat16"))
    low = next(csv.DictReader(done.stdout.splitlines()))
    np.testing.assert_allclose(
        [float(low[f"p_{n}"]) for n in labels], [float(got[f"p_{n}"]) for n in labels],
        atol=0.01,
    )
    from msjax.inference.predict import Predictor

    predictor = Predictor(tmp_path / "fold_00", compute_dtype="bfloat16")
    cfg = predictor.feature_cfg
    batch = {"wav": np.zeros((8, cfg.segment_samples), np.float32),
             "mfcc": np.zeros((8, cfg.segment_frames, cfg.n_mfcc), np.float32),
             "spec": np.zeros((8, cfg.spec_bins, cfg.segment_frames), np.float32)}
    found = products(predictor._log_probs.lower(predictor.variables, None, batch).as_text())
    assert len(found) > 20
    assert all(set(p[1]) == {"bf16"} for p in found if not p[2]), found


def test_ablate_compares_variants_under_the_same_folds(tmp_path):
    done = ok(run("ablate", "--no_attention", f"--workdir={tmp_path}", "--quiet", *TINY))
    # --quiet: per variant, a header, one line per epoch (2 folds x 2 epochs) and per fold.
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith("== ")] == ["== full", "== no_attention"]
    assert len([line for line in lines if re.fullmatch(r"fold \d epoch \d: .*", line)]) == 8
    assert len([line for line in lines if re.fullmatch(r"fold \d seed 0 .*", line)]) == 4
    assert len(lines) == 2 + 8 + 4, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"ablation table: {tmp_path / 'ablation.txt'} (also ablation.csv, ablation.json)"
    )
    table = (tmp_path / "ablation.txt").read_text()
    assert "full" in table and "no_attention" in table and "baseline" not in table
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["full", "no_attention"]
    assert "ΔUA" in table and "UA p (W)" in table
    full_ua, variant_ua = (
        [json.loads((tmp_path / v / f"fold_{k:02d}" / "result.json").read_text())["ua"]
         for k in range(2)] for v in ("full", "no_attention")
    )
    paired = rows[1]["paired"]["UA"]
    assert paired["n"] == 2
    assert paired["mean"] == pytest.approx(100 * np.mean(np.subtract(variant_ua, full_ua)))
    variants = ("full", "no_attention")
    folds = [json.loads((tmp_path / v / "folds.json").read_text()) for v in variants]
    assert folds[0] == folds[1]
    models = [json.loads((tmp_path / v / "config.json").read_text())["model"] for v in variants]
    assert models[0]["use_attention"] and not models[1]["use_attention"]
    assert "no_attention" in done.stdout
    # bin/summarize rebuilds the same ablation files from the variants' folds.
    names = ("ablation.txt", "ablation.csv", "ablation.json")
    written = {name: (tmp_path / name).read_bytes() for name in names}
    for name in names:
        (tmp_path / name).unlink()
    ok(run("summarize", f"--workdir={tmp_path}"))
    for name in names:
        assert (tmp_path / name).read_bytes() == written[name], name


def test_dry_run_prints_folds_and_trains_nothing(tmp_path):
    done = ok(run("train", f"--workdir={tmp_path}", "--dry_run", *TINY))
    assert "42 utterances, 3 speakers" in done.stdout
    assert "0 train" in done.stdout and "1 test" in done.stdout
    assert not list(tmp_path.glob("fold_*"))


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--dataset=nope"], 2, "--dataset"),
        (["--bogus_flag=1"], 2, "bogus_flag"),
        (["extra_argument"], 2, "unexpected arguments"),
        (["--dataset=emodb", "--data_dir=/nonexistent/emodb", "--dry_run"], 3, "nonexistent"),
        (["--config.protocol=stratified", "--folds=1", "--dry_run"], 2, "stratified 1-fold"),
        (["--resume"], 2, "there is no run to resume"),
    ],
)
def test_exit_codes_and_one_line_errors(tmp_path, args, code, message):
    done = run("train", f"--workdir={tmp_path}", *args)
    assert done.returncode == code, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in done.stderr


def test_extract_fills_the_cache_for_training(tmp_path):
    done = ok(run("extract", f"--workdir={tmp_path}", *TINY))
    assert list((tmp_path / "cache").rglob("*.npz"))
    assert "42" in done.stdout + done.stderr
