"""RAVDESS and CREMA-D on generated fake trees: names, layout errors, count checks,
and that they load through the manifest's code path (`bin/manifest` writes them)."""

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run

from msjax.data import cremad, load_dataset, manifest, ravdess
from msjax.errors import DataError, LabelError, LayoutError


def write_wav(path: Path, n: int = 320) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(n) / 5.0), 16000, subtype="PCM_16")


def make_ravdess(root: Path, actors=(1, 2, 3), full: bool = False) -> Path:
    """Every emotion of each actor; `full` writes the real 60 files per actor."""
    for actor in actors:
        for emotion in range(1, 9):
            intensities = (1,) if emotion == 1 or not full else (1, 2)
            for intensity in intensities:
                for statement in (1, 2) if full else (1,):
                    for rep in (1, 2) if full else (1,):
                        codes = (3, 1, emotion, intensity, statement, rep, actor)
                        name = "-".join(f"{c:02d}" for c in codes)
                        write_wav(root / f"Actor_{actor:02d}" / f"{name}.wav", n=64)
    return root


def make_cremad(root: Path, actors=(1001, 1002, 1003)) -> Path:
    for actor in actors:
        for emotion in cremad.EMOTIONS:
            for sentence in ("DFA", "IEO"):
                write_wav(root / "AudioWAV" / f"{actor}_{sentence}_{emotion}_XX.wav")
    return root


def test_ravdess_fake_tree(tmp_path):
    ds = ravdess.load(make_ravdess(tmp_path / "r"), allow_count_mismatch=True)
    assert ds.name == "ravdess" and ds.labels == ravdess.LABELS
    assert len(ds) == 24 and ds.speakers == ("01", "02", "03")
    assert ds.class_counts() == {label: 3 for label in ravdess.LABELS}
    first = ds.utterances[0]
    assert (first.uid, first.label, first.speaker) == ("03-01-01-01-01-01-01", "neutral", "01")


def test_ravdess_full_counts_pass_and_partial_counts_fail(tmp_path, caplog):
    ds = ravdess.load(make_ravdess(tmp_path / "full", actors=range(1, 25), full=True))
    assert len(ds) == 1440 and ds.class_counts()["neutral"] == 96
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as err:
        ravdess.load(make_ravdess(tmp_path / "part"))
    assert "24 utterances, expected 1440" in str(err.value)
    assert "3 speakers, expected 24" in str(err.value)


@pytest.mark.parametrize(
    "name, match",
    [
        ("03-02-05-01-01-01-01.wav", "not an audio-only speech file"),
        ("03-01-09-01-01-01-01.wav", "unknown emotion code '09'"),
        ("03-01-05-01-01-01.wav", "does not match MM-CC-EE-II-SS-RR-AA.wav"),
        ("03-01-05-01-01-01-02.wav", "names actor 02 but lies in Actor_01/"),
    ],
)
def test_ravdess_bad_names(tmp_path, name, match):
    root = make_ravdess(tmp_path / "r", actors=(1,))
    write_wav(root / "Actor_01" / name)
    with pytest.raises(LabelError, match=match):
        ravdess.load(root, allow_count_mismatch=True)


def test_ravdess_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="directory does not exist"):
        ravdess.load(tmp_path / "nothing")
    make_ravdess(tmp_path / "outer" / "RAVDESS", actors=(1,))
    with pytest.raises(LayoutError) as err:
        ravdess.load(tmp_path / "outer")
    lines = str(err.value).splitlines()
    assert lines[0] == f"{tmp_path / 'outer'}: no Actor_XX folders"
    nested = tmp_path / "outer" / "RAVDESS"
    assert lines[1] == f"(the corpus seems to be in {nested}; pass that directory instead)"


def test_unreadable_files_are_all_listed(tmp_path):
    root = make_ravdess(tmp_path / "r", actors=(1,))
    bad = sorted((root / "Actor_01").glob("*.wav"))[:2]
    for path in bad:
        path.write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        ravdess.load(root, allow_count_mismatch=True)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{root}: 2 problem(s)"
    assert all(
        f"{root}: {path}: cannot read audio header" in line for path, line in zip(bad, lines[1:])
    )


def test_cremad_fake_tree_and_errors(tmp_path):
    root = make_cremad(tmp_path / "c")
    ds = cremad.load(root, allow_count_mismatch=True)
    assert ds.labels == cremad.LABELS and len(ds) == 36
    assert ds.speakers == ("1001", "1002", "1003")
    assert ds.by_uid()["1002_IEO_NEU_XX"].label == "neutral"
    with pytest.raises(DataError, match="36 utterances, expected 7442"):
        cremad.load(root)
    with pytest.raises(LayoutError, match="missing AudioWAV/"):
        cremad.load(tmp_path)
    write_wav(root / "AudioWAV" / "1001_DFA_XYZ_XX.wav")
    with pytest.raises(LabelError, match="unknown emotion code 'XYZ'"):
        cremad.load(root, allow_count_mismatch=True)


def test_corpus_written_as_manifest_loads_back_equal(tmp_path):
    root = make_cremad(tmp_path / "c")
    direct = load_dataset("cremad", root, allow_count_mismatch=True)
    for out in (tmp_path / "c" / "cremad.csv", tmp_path / "lists" / "cremad.jsonl"):
        manifest.write(manifest.dataset_rows(direct, out.parent), out)
        listed = manifest.load(out, labels=",".join(cremad.LABELS))
        assert listed.utterances == direct.utterances
    with open(tmp_path / "c" / "cremad.csv") as f:
        first = next(csv.DictReader(f))
    # Below the manifest's folder paths are relative (the pair moves together), else absolute.
    assert first == {"path": "AudioWAV/1001_DFA_ANG_XX.wav", "emotion": "anger", "speaker": "1001"}
    assert f'"path": "{root}/AudioWAV/' in (tmp_path / "lists" / "cremad.jsonl").read_text()


def test_bin_manifest_writes_a_corpus_and_reports_errors(tmp_path):
    root = make_ravdess(tmp_path / "r")

    def run_manifest(*args):
        return run("manifest", "--dataset=ravdess", *args, timeout=300)

    out = tmp_path / "ravdess.tsv"
    done = run_manifest(f"--data_dir={root}", f"--output={out}", "--allow_count_mismatch")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: 24 rows of ravdess, 3 speakers (neutral 3, calm 3")
    assert manifest.load(out, labels=ravdess.LABELS).utterances == ravdess.load(
        root, allow_count_mismatch=True
    ).utterances
    failed = run_manifest(f"--data_dir={root}", f"--output={tmp_path / 'x.csv'}")
    assert failed.returncode == 3 and "24 utterances, expected 1440" in failed.stderr
    assert not (tmp_path / "x.csv").exists()
    wrong = run_manifest(f"--data_dir={root}", f"--output={tmp_path / 'x.txt'}")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1] == (
        f"error: --output={tmp_path / 'x.txt'}: a manifest ends in .csv, .tsv, .jsonl"
    )
