"""bin/predict at scale: segments of many files packed into one compiled batch shape,
features prepared while the model runs, long recordings read in windows, and the
per-segment timeline."""

import csv
import json
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from conftest import ok, products, run

from msjax import inference
from msjax.errors import AudioError
from msjax.features.acoustic import FeatureConfig, segment, utterance_features
from msjax.features.audio import load_audio, stream_audio
from msjax.features.streaming import file_segments

CFG = FeatureConfig(segment_seconds=1.0)  # the tiny trained run's segments
SR = CFG.sample_rate


def _speech_like(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """Noise whose level wanders, with one loud tone burst: the loudest frame lies in
    one window only, so a window-local level reference would show."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    x = rng.standard_normal((n, channels)) * (0.05 * (1.2 + np.sin(0.7 * t)))[:, None]
    burst = (t > 0.6 * seconds) & (t < 0.6 * seconds + 0.4)
    x += (0.5 * np.sin(2 * np.pi * 440 * t) * burst)[:, None]
    return x.astype(np.float32)


def _write(path: Path, seconds: float, rate: int = SR, seed: int = 0, channels: int = 1) -> Path:
    sf.write(path, _speech_like(seconds, rate, seed, channels), rate, subtype="FLOAT")
    return path


# -- long recordings in windows -------------------------------------------------------------

@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The frame counts of every SoundFile.read call (decoding calls) from now on."""
    calls = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        calls.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    return calls


def test_stream_audio_joins_to_load_audio_and_reads_one_block_at_a_time(tmp_path, reads):
    for rate, channels in [(SR, 1), (22050, 2), (8000, 1)]:
        path = _write(tmp_path / f"x{rate}.wav", 5.3, rate, channels=channels)
        reads.clear()
        blocks = list(stream_audio(path, 16000, SR))
        assert reads and all(0 < r <= 16000 for r in reads)
        assert [b.shape[0] for b in blocks[:-1]] == [16000] * (len(blocks) - 1)
        # One soxr stream over the file: the same samples as the one-shot resampling.
        np.testing.assert_allclose(np.concatenate(blocks), load_audio(path), atol=1e-6)


def test_stream_audio_reports_a_bad_block_naming_the_file(tmp_path):
    x = _speech_like(3.0, SR, 0)
    x[40000] = np.nan
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains NaN"):
        list(stream_audio(tmp_path / "nan.wav", 16000))
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), SR)
    with pytest.raises(AudioError, match="empty.wav: contains no audio samples"):
        list(stream_audio(tmp_path / "empty.wav", 16000))


@pytest.mark.parametrize("rate,channels", [(SR, 1), (22050, 2)])
def test_long_file_windows_give_the_whole_file_segments(tmp_path, monkeypatch, reads, rate,
                                                        channels):
    """7.3 windows of 2 segments: no read holds more than a window, no whole-file load,
    and the rows equal those cut from the whole file (frames at window boundaries see
    their neighbours; levels are the file's)."""
    path = _write(tmp_path / "long.wav", 14.6, rate, channels=channels)
    wav = load_audio(path)
    whole = segment(wav, utterance_features(wav, CFG), CFG)
    window = 2 * CFG.segment_samples
    reads.clear()
    monkeypatch.setattr(sf, "read", None)  # the whole-file decoder must not be used
    windows = list(file_segments(path, CFG, window))
    assert len(windows) == 8 and sum(n for _, n in windows) == wav.shape[0]
    assert max(reads) <= window and len(reads) >= 2 * 8  # two passes
    for key, atol in [("wav", 1e-6), ("spec", 1e-4), ("mfcc", 1e-3)]:
        got = np.concatenate([getattr(s, key) for s, _ in windows])
        np.testing.assert_allclose(got, getattr(whole, key), atol=atol, err_msg=key)


def test_short_file_is_read_whole(tmp_path):
    path = _write(tmp_path / "short.wav", 1.5)
    wav = load_audio(path)
    ((segs, n),) = file_segments(path, CFG, 2 * CFG.segment_samples)
    whole = segment(wav, utterance_features(wav, CFG), CFG)
    assert n == wav.shape[0]
    np.testing.assert_array_equal(segs.mfcc, whole.mfcc)
    np.testing.assert_array_equal(segs.spec, whole.spec)


# -- packing, one compile, overlap ------------------------------------------------------------

@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Files of 1, 4, 13 and 2 segments (of 1 s); the 13-segment one is longer than a
    4 s window."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, (name, seconds) in enumerate(
        [("a_one.wav", 0.4), ("b_four.wav", 3.3), ("c_long.wav", 12.5), ("d_two.wav", 2.0)]
    ):
        _write(folder / name, seconds, seed=seed)
    return folder


def test_segments_of_many_files_share_one_compiled_batch(trained, mixed_folder, monkeypatch):
    from msjax.inference.predict import Predictor, predict_files

    traces = []
    real = inference.log_probs
    monkeypatch.setattr(inference, "log_probs", lambda *a, **k: traces.append(1) or real(*a, **k))
    predictor = Predictor(trained / "fold_00", batch_size=4, window_seconds=4.0)
    shapes = []
    real_batch = predictor.segment_log_probs

    def spy(batch):
        shapes.append({k: v.shape[0] for k, v in batch.items()})
        return real_batch(batch)

    monkeypatch.setattr(predictor, "segment_log_probs", spy)
    paths = sorted(mixed_folder.glob("*.wav"))
    packed = list(predict_files(predictor, paths))
    assert [r.segment_logprobs.shape[0] for r in packed] == [1, 4, 13, 2]
    assert len(shapes) == 5  # 20 segments in batches of 4
    alone = [next(predict_files(predictor, [p])) for p in paths]  # each padded to 4
    assert all(s == {"mfcc": 4, "spec": 4, "wav": 4} for s in shapes)
    assert len(traces) == 1  # one batch shape, one compile, whatever the lengths
    for p, a in zip(packed, alone):
        assert p.record["status"] == "ok"
        np.testing.assert_allclose(p.segment_logprobs, a.segment_logprobs, atol=1e-5)
        assert p.record["label"] == a.record["label"]


def test_features_of_the_next_batches_are_prepared_while_the_model_runs(trained, tmp_path,
                                                                       monkeypatch):
    """One-segment files in batches of 2. While the model runs on the first batch (files 0
    and 1), the feature thread reads ahead until its queue of two messages is full: the
    "file" messages of files 1 and 2, then the batch of files 2 and 3, which waits. File
    4 is read only once the model has taken something from the queue."""
    from msjax.inference.predict import Predictor, predict_files

    paths = [_write(tmp_path / f"{i}.wav", 0.5, seed=i) for i in range(6)]
    predictor = Predictor(trained / "fold_00", batch_size=2)
    started = {path: threading.Event() for path in paths}
    reader_threads = set()
    real_segments, real_batch = predictor.segments, predictor.segment_log_probs

    def segments(path):
        reader_threads.add(threading.get_ident())
        started[path].set()
        return real_segments(path)

    during_first = []

    def model(batch):
        if not during_first:  # read ahead as far as the bound, and not one file further
            during_first.append(
                (started[paths[3]].wait(timeout=60), started[paths[4]].wait(timeout=2))
            )
        return real_batch(batch)

    monkeypatch.setattr(predictor, "segments", segments)
    monkeypatch.setattr(predictor, "segment_log_probs", model)
    results = list(predict_files(predictor, paths))
    assert [r.record["status"] for r in results] == ["ok"] * 6
    assert during_first == [(True, False)]
    assert threading.get_ident() not in reader_threads


def test_a_bad_file_in_a_batch_keeps_the_others_in_order(trained, mixed_folder):
    from msjax.inference.predict import Predictor, predict

    (mixed_folder / "b_broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    paths = sorted(mixed_folder.glob("*.wav"))
    records = list(predict(Predictor(trained / "fold_00", batch_size=4, window_seconds=4.0),
                           paths))
    assert [Path(r["path"]).name for r in records] == [p.name for p in paths]
    status = {Path(r["path"]).name: r["status"] for r in records}
    assert status.pop("b_broken.wav") == "error" and set(status.values()) == {"ok"}


def test_streamed_prediction_equals_the_whole_file_one(trained, tmp_path):
    from msjax.inference.predict import Predictor, predict_files

    path = _write(tmp_path / "long.wav", 12.5, 22050)
    windowed = Predictor(trained / "fold_00", window_seconds=2.0)
    whole = Predictor(trained / "fold_00", window_seconds=60.0)
    (a,) = predict_files(windowed, [path])
    (b,) = predict_files(whole, [path])
    np.testing.assert_allclose(a.segment_logprobs, b.segment_logprobs, atol=1e-4)
    for name, p in a.record["probabilities"].items():
        assert abs(p - b.record["probabilities"][name]) < 1e-4


# -- bfloat16 ----------------------------------------------------------------------------------

def _low_products(predictor, batch) -> tuple[list, list]:
    """The (bf16, other) products of the predictor's program for `batch`, leaving out
    those that ask for full precision on purpose (HIGHEST)."""
    program = predictor._log_probs.lower(
        predictor.variables, predictor._encoder_params, batch
    ).as_text()
    found = [p for p in products(program) if not p[2]]
    return [p for p in found if set(p[1]) == {"bf16"}], [p for p in found if set(p[1]) != {"bf16"}]


def test_bfloat16_prediction_computes_in_bfloat16_and_follows_float32(trained, mixed_folder,
                                                                      monkeypatch):
    """--compute_dtype=bfloat16: the encoder's and the head's products all take bf16
    operands, from weights cast once at load; probabilities stay within 0.01 of float32's
    (measured here: 2e-4) and the predicted labels agree."""
    from msjax.inference.predict import Predictor, predict_files

    paths = sorted(mixed_folder.glob("*.wav"))
    full = Predictor(trained / "fold_00", batch_size=4)
    low = Predictor(trained / "fold_00", batch_size=4, compute_dtype="bfloat16")
    batches = []
    real_batch = low.segment_log_probs
    monkeypatch.setattr(low, "segment_log_probs", lambda b: batches.append(b) or real_batch(b))
    low_results = list(predict_files(low, paths))
    full_results = list(predict_files(full, paths))

    bf16, other = _low_products(low, batches[0])
    assert len(bf16) > 20 and not other, other[:5]
    bf16, other = _low_products(full, batches[0])
    assert not bf16 and other
    for leaf in jax.tree.leaves((low.variables["params"], low._encoder_params)):
        assert leaf.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(low.variables["norm"]))

    worst = 0.0
    for a, b in zip(low_results, full_results):
        assert a.record["status"] == b.record["status"] == "ok"
        assert a.record["label"] == b.record["label"]
        assert a.segment_logprobs.dtype == np.float32
        worst = max(worst, np.abs(np.exp(a.segment_logprobs) - np.exp(b.segment_logprobs)).max())
    assert 0 < worst < 0.01, worst


# -- the timeline -------------------------------------------------------------------------------

def test_timeline_rows_tile_each_file_and_plots_are_pngs(trained, mixed_folder, tmp_path):
    out, rows_path, plots = tmp_path / "preds.csv", tmp_path / "seg.jsonl", tmp_path / "plots"
    ok(run("predict", f"--checkpoint={trained / 'fold_00'}", f"--input={mixed_folder}",
           f"--output={out}", f"--timeline={rows_path}", f"--timeline_plot={plots}",
           "--batch_size=4", "--window_seconds=4"))
    with open(out) as f:
        predicted = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    for path in sorted(mixed_folder.glob("*.wav")):
        mine = [r for r in rows if r["path"] == str(path)]
        starts, ends = [r["start"] for r in mine], [r["end"] for r in mine]
        assert starts[0] == 0.0 and starts[1:] == ends[:-1]
        assert ends[-1] == pytest.approx(sf.info(path).duration, abs=1 / SR)
        for r in mine:
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert predicted[path.name]["status"] == "ok"
        png = (plots / f"{path.stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_timeline_rows_of_a_long_recording_are_written_window_by_window(trained, tmp_path):
    """A 12.5 s recording read in 2 s windows, 2 segments per batch: before each batch
    the rows of the batches before it (but the latest segment, whose end may be the
    file's) are on disk already, flushed; at the end the rows tile the file once."""
    from msjax.inference.predict import Predictor, predict_files
    from msjax.inference.timeline import TimelineOutput

    path = _write(tmp_path / "long.wav", 12.5)
    rows_path = tmp_path / "rows.jsonl"
    predictor = Predictor(trained / "fold_00", batch_size=2, window_seconds=2.0)
    timeline = TimelineOutput(rows_path, None, [path], predictor.labels, 1.0)
    on_disk = []
    real_batch = predictor.segment_log_probs

    def model(batch):
        on_disk.append(len(rows_path.read_text().splitlines()))
        return real_batch(batch)

    predictor.segment_log_probs = model
    for index, result in enumerate(predict_files(predictor, [path], timeline.add_segments)):
        timeline.add(index, result)
    timeline.close()
    assert on_disk == [max(0, 2 * k - 1) for k in range(7)]  # 13 segments, 7 batches
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [r["start"] for r in rows] == [float(k) for k in range(13)]
    assert [r["end"] for r in rows] == [float(k) for k in range(1, 13)] + [12.5]
    np.testing.assert_allclose(
        [list(r["probabilities"].values()) for r in rows], np.exp(result.segment_logprobs),
        atol=1e-6,
    )


# -- inputs not to be trusted, outputs not to be lost --------------------------------------------

@pytest.fixture(scope="module")
def streaming_predictor(trained):
    """The tiny run's fold 0, 1 s segments, recordings over 2 s read in windows."""
    from msjax.inference.predict import Predictor

    return Predictor(trained / "fold_00", batch_size=4, window_seconds=2.0)


def _predicted(predictor, paths: list[Path]) -> dict[str, dict]:
    from msjax.inference.predict import predict

    records = {Path(r["path"]).name: r for r in predict(predictor, paths)}
    for record in records.values():
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    return records


def test_a_clip_under_a_quarter_segment_is_predicted_with_a_warning(streaming_predictor,
                                                                    tmp_path):
    """Segments of 1 s: 0.2 s is flagged, 0.3 s is not (the threshold, 0.25 s, between)."""
    paths = [_write(tmp_path / "short.wav", 0.2), _write(tmp_path / "enough.wav", 0.3, seed=1)]
    records = _predicted(streaming_predictor, paths)
    short = records["short.wav"]
    assert short["status"] == "warning"
    assert short["error"] == (
        f"{paths[0]}: only 0.2 s of audio, under 0.25 s (0.25 of the model's 1 s segment): "
        "the prediction rests mostly on padding"
    )
    assert records["enough.wav"]["status"] == "ok" and "error" not in records["enough.wav"]


def test_silent_input_is_predicted_with_a_warning(streaming_predictor, tmp_path):
    """Digital silence and noise at -70 dBFS RMS are flagged, -50 dBFS is not; the 3 s
    files are read in two windows, the level is the whole file's."""
    rng = np.random.default_rng(0)

    def noise(name: str, dbfs: float) -> Path:
        x = rng.standard_normal(3 * SR)
        x *= 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))
        sf.write(tmp_path / name, x.astype(np.float32), SR, subtype="FLOAT")
        return tmp_path / name

    sf.write(tmp_path / "zeros.wav", np.zeros(3 * SR, np.int16), SR)
    paths = [tmp_path / "zeros.wav", noise("quiet.wav", -70.0), noise("low.wav", -50.0)]
    records = _predicted(streaming_predictor, paths)
    assert records["zeros.wav"]["status"] == "warning"
    assert records["zeros.wav"]["error"] == (
        f"{paths[0]}: digital silence (every sample is zero): the prediction is not of speech"
    )
    assert records["quiet.wav"]["status"] == "warning"
    assert records["quiet.wav"]["error"] == (
        f"{paths[1]}: near-silent (RMS -70 dBFS, under -60 dBFS): the prediction is not "
        "of speech"
    )
    assert records["low.wav"]["status"] == "ok"


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    """Checked before the checkpoint is loaded: refused, the file is as it was; with
    --overwrite the run goes on (here to the missing checkpoint)."""
    from msjax.errors import UsageError
    from msjax.inference.predict import check_output
    from msjax.inference.timeline import check_plots

    out, rows, plots = tmp_path / "preds.csv", tmp_path / "rows.csv", tmp_path / "plots"
    plots.mkdir()
    for existing in (out, rows, plots / "clip.png"):
        existing.write_text("earlier results\n")
    args = ["--checkpoint=missing", "--input=clip.wav"]
    done = run("predict", *args, f"--output={out}")
    assert done.returncode == 2
    assert done.stderr == f"error: --output={out}: exists; pass --overwrite to replace it\n"
    assert out.read_text() == "earlier results\n"
    with pytest.raises(UsageError, match=r"^--timeline=.*rows.csv: exists; pass --overwrite"):
        check_output(rows, "--timeline", "the timeline")
    with pytest.raises(UsageError, match=r"plots/clip.png exists; pass --overwrite to replace"):
        check_plots([Path("clip.wav")], plots, overwrite=False)
    done = run("predict", *args, f"--output={out}", f"--timeline={rows}",
               f"--timeline_plot={plots}", "--overwrite")
    assert done.returncode == 3 and done.stderr.startswith("error: missing: does not exist")


def test_bad_flags_are_refused_before_any_work(tmp_path):
    from msjax.errors import UsageError
    from msjax.inference.predict import Predictor, check_folder

    with pytest.raises(UsageError, match="--batch_size=0"):
        Predictor(tmp_path / "no_checkpoint", batch_size=0)
    with pytest.raises(UsageError, match="--window_seconds=0"):
        Predictor(tmp_path / "no_checkpoint", window_seconds=0)
    with pytest.raises(UsageError, match="--compute_dtype=float16: must be one of float32, bf"):
        Predictor(tmp_path / "no_checkpoint", compute_dtype="float16")
    (tmp_path / "file.png").write_text("")
    with pytest.raises(UsageError, match="--timeline_plot=.*is a file"):
        check_folder(tmp_path / "file.png", "--timeline_plot", "timeline plots")
