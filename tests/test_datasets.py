"""Dataset loaders on tiny fake trees that follow each corpus' real naming conventions."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from msjax.data import DATASETS, emodb, emovo, iemocap, load_dataset
from msjax.data.records import Dataset, Utterance, label_ids, label_index
from msjax.errors import AudioError, DataError, LabelError, LayoutError, UsageError

SR = 16000


def write_wav(path: Path, n: int = 320) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(n) / 5.0), SR, subtype="PCM_16")


# --- EMODB -------------------------------------------------------------------------------


def make_emodb(root: Path, speakers=("03", "08", "09"), texts=("a01", "b02")) -> Path:
    for spk in speakers:
        for text in texts:
            for letter in "WLEAFTN":
                write_wav(root / "wav" / f"{spk}{text}{letter}a.wav")
    return root


def test_emodb_loads_fake_tree(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    ds = emodb.load(root, allow_count_mismatch=True)
    assert ds.name == "emodb"
    assert ds.labels == ("anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral")
    assert len(ds) == 42
    assert ds.speakers == ("03", "08", "09")
    assert ds.class_counts() == {label: 6 for label in ds.labels}
    first = ds.utterances[0]
    assert first.uid == "03a01Aa" and first.label == "fear" and first.speaker == "03"
    assert first.duration == pytest.approx(320 / SR)
    assert first.session is None
    assert [u.uid for u in ds.utterances] == sorted(u.uid for u in ds.utterances)
    assert label_ids(ds)[:2] == [label_index(ds, "fear"), label_index(ds, "disgust")]


def test_emodb_skips_hidden_and_non_wav_files(tmp_path):
    root = make_emodb(tmp_path / "emodb", speakers=("03",), texts=("a01",))
    (root / "wav" / "._03a01Wa.wav").write_bytes(b"\x00\x05")
    (root / "wav" / "notes.txt").write_text("x")
    assert len(emodb.load(root, allow_count_mismatch=True)) == 7


def test_emodb_count_mismatch_raises_with_counts(tmp_path, caplog):
    root = make_emodb(tmp_path / "emodb")
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as err:
        emodb.load(root)
    message = str(err.value)
    assert str(root) in message
    assert "42 utterances, expected 535" in message
    assert "anger 6 (expected 127)" in message
    assert "per speaker: 03 14, 08 14, 09 14" in message
    assert "allow_count_mismatch=True" in message
    assert "expected 535" in caplog.text


def test_emodb_count_mismatch_allowed_only_warns(tmp_path, caplog):
    root = make_emodb(tmp_path / "emodb")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("emodb", root, allow_count_mismatch=True)
    assert len(ds) == 42
    assert "per class: anger 6" in caplog.text


def test_emodb_missing_wav_dir_gives_expected_tree(tmp_path):
    root = tmp_path / "emodb"
    root.mkdir()
    with pytest.raises(LayoutError) as err:
        emodb.load(root)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{root}: missing wav/"
    assert "expected layout:" in lines
    assert any("03a01Fa.wav" in line for line in lines)


def test_layout_error_points_at_nested_corpus(tmp_path):
    make_emodb(tmp_path / "download" / "emodb", speakers=("03",), texts=("a01",))
    with pytest.raises(LayoutError, match="seems to be in .*emodb; pass that directory"):
        emodb.load(tmp_path / "download")


def test_missing_root_is_a_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        emodb.load(tmp_path / "nowhere")


def test_emodb_empty_wav_dir(tmp_path):
    (tmp_path / "wav").mkdir()
    with pytest.raises(LayoutError, match="no .wav files in wav/"):
        emodb.load(tmp_path)


@pytest.mark.parametrize(
    "name, match",
    [
        ("03a01Xa.wav", "unknown emotion code 'X'"),
        ("3a01Wa.wav", "file name does not match"),
        ("recording.wav", "file name does not match"),
    ],
)
def test_emodb_bad_file_names(tmp_path, name, match):
    root = make_emodb(tmp_path / "emodb", speakers=("03",), texts=("a01",))
    write_wav(root / "wav" / name)
    with pytest.raises(LabelError, match=match) as err:
        emodb.load(root, allow_count_mismatch=True)
    assert name in str(err.value)


def test_unreadable_audio_names_the_file(tmp_path):
    root = make_emodb(tmp_path / "emodb", speakers=("03",), texts=("a01",))
    (root / "wav" / "03a01Wa.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="03a01Wa.wav: cannot read audio header"):
        emodb.load(root, allow_count_mismatch=True)


# --- EMOVO -------------------------------------------------------------------------------


def make_emovo(root: Path, texts=("b1", "n2")) -> Path:
    for spk in emovo.SPEAKERS:
        for code in emovo.EMOTIONS:
            for text in texts:
                write_wav(root / spk / f"{code}-{spk}-{text}.wav")
    (root / "documents").mkdir(parents=True)
    return root


def test_emovo_loads_fake_tree(tmp_path):
    ds = emovo.load(make_emovo(tmp_path / "emovo"), allow_count_mismatch=True)
    assert ds.labels == (
        "anger",
        "disgust",
        "fear",
        "happiness",
        "sadness",
        "neutral",
        "surprise",
    )
    assert len(ds) == 6 * 7 * 2
    assert ds.speakers == ("f1", "f2", "f3", "m1", "m2", "m3")
    utt = ds.by_uid()["gio-m2-n2"]
    assert utt.label == "happiness" and utt.speaker == "m2"
    assert ds.class_counts() == {label: 12 for label in ds.labels}


def test_emovo_count_mismatch_raises(tmp_path):
    with pytest.raises(DataError, match="84 utterances, expected 588"):
        emovo.load(make_emovo(tmp_path / "emovo"))


def test_emovo_missing_speaker_folder(tmp_path):
    root = make_emovo(tmp_path / "emovo")
    for path in (root / "m3").iterdir():
        path.unlink()
    (root / "m3").rmdir()
    with pytest.raises(LayoutError) as err:
        emovo.load(root)
    first, *rest = str(err.value).splitlines()
    assert first == f"{root}: missing m3/"
    assert any("dis-f1-b1.wav" in line for line in rest)


@pytest.mark.parametrize(
    "name, match",
    [
        ("xyz-f1-b1.wav", "unknown emotion code 'xyz'"),
        ("dis-m1-b1.wav", "speaker 'm1' in a folder of 'f1'"),
        ("dis_f1_b1.wav", "file name does not match"),
    ],
)
def test_emovo_bad_file_names(tmp_path, name, match):
    root = make_emovo(tmp_path / "emovo")
    write_wav(root / "f1" / name)
    with pytest.raises(LabelError, match=match) as err:
        emovo.load(root, allow_count_mismatch=True)
    assert name in str(err.value)


# --- IEMOCAP -----------------------------------------------------------------------------

# (utterance suffix, label code) per dialog; fru/xxx are skipped, exc merges into happiness.
IEMOCAP_LINES = [
    ("F000", "neu"),
    ("M000", "ang"),
    ("F001", "exc"),
    ("M001", "sad"),
    ("F002", "hap"),
    ("M002", "fru"),
    ("F003", "xxx"),
]


def make_iemocap(root: Path) -> Path:
    for k in iemocap.SESSIONS:
        for dialog in (f"Ses0{k}F_impro01", f"Ses0{k}M_script01_1"):
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for i, (suffix, code) in enumerate(IEMOCAP_LINES):
                uid = f"{dialog}_{suffix}"
                lines.append(f"[{i}.5000 - {i + 1}.2500]\t{uid}\t{code}\t[2.5000, 3.0000, 2.0000]")
                lines.append("C-E1:\tNeutral;\t()")
                write_wav(root / f"Session{k}/sentences/wav/{dialog}/{uid}.wav")
            path = root / f"Session{k}/dialog/EmoEvaluation/{dialog}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
        # Sub-folders of EmoEvaluation (Categorical/, Attribute/) are not label files.
        (root / f"Session{k}/dialog/EmoEvaluation/Categorical").mkdir()
    return root


def test_iemocap_loads_fake_tree(tmp_path):
    ds = iemocap.load(make_iemocap(tmp_path / "iemocap"), allow_count_mismatch=True)
    assert ds.labels == ("anger", "happiness", "sadness", "neutral")
    assert len(ds) == 5 * 2 * 5
    assert ds.speakers == tuple(f"{k}{g}" for k in range(1, 6) for g in "FM")
    assert ds.sessions == ("1", "2", "3", "4", "5")
    assert ds.class_counts() == {"anger": 10, "happiness": 20, "sadness": 10, "neutral": 10}
    by_uid = ds.by_uid()
    # The speaker comes from the letter before the number, not from the dialog prefix.
    assert by_uid["Ses03F_impro01_M000"].speaker == "3M"
    assert by_uid["Ses03M_script01_1_F001"].speaker == "3F"
    assert by_uid["Ses03M_script01_1_F001"].label == "happiness"
    assert by_uid["Ses03M_script01_1_F001"].session == "3"
    assert "Ses01F_impro01_M002" not in by_uid  # fru


def test_iemocap_count_mismatch_raises(tmp_path):
    with pytest.raises(
        DataError, match="50 utterances, expected 5531.*anger 10 \\(expected 1103\\)"
    ):
        iemocap.load(make_iemocap(tmp_path / "iemocap"))


def test_iemocap_missing_session(tmp_path):
    root = make_iemocap(tmp_path / "iemocap")
    (root / "Session3/sentences/wav").rename(root / "Session3/sentences/audio")
    with pytest.raises(LayoutError) as err:
        iemocap.load(root)
    first, *rest = str(err.value).splitlines()
    assert first == f"{root}: missing Session3/sentences/wav/"
    assert any("EmoEvaluation" in line for line in rest)


def _edit_label_file(root: Path, old: str, new: str) -> Path:
    path = root / "Session2/dialog/EmoEvaluation/Ses02F_impro01.txt"
    path.write_text(path.read_text().replace(old, new))
    return path


def test_iemocap_unknown_code_names_file_and_line(tmp_path):
    root = make_iemocap(tmp_path / "iemocap")
    path = _edit_label_file(root, "Ses02F_impro01_M001\tsad", "Ses02F_impro01_M001\tgrr")
    with pytest.raises(LabelError, match=f"{path}:9: unknown emotion code 'grr'"):
        iemocap.load(root, allow_count_mismatch=True)


def test_iemocap_unparseable_line(tmp_path):
    root = make_iemocap(tmp_path / "iemocap")
    path = _edit_label_file(root, "[1.5000 - 2.2500]", "[1.5000 2.2500")
    with pytest.raises(LabelError, match=f"{path}:5: cannot parse label line"):
        iemocap.load(root, allow_count_mismatch=True)


def test_iemocap_unparseable_utterance_id(tmp_path):
    root = make_iemocap(tmp_path / "iemocap")
    path = _edit_label_file(root, "Ses02F_impro01_M000", "Ses02F_impro01_X000")
    with pytest.raises(LabelError, match=f"{path}:5: cannot parse utterance id"):
        iemocap.load(root, allow_count_mismatch=True)


def test_iemocap_label_without_audio_names_both(tmp_path):
    root = make_iemocap(tmp_path / "iemocap")
    wav = root / "Session4/sentences/wav/Ses04M_script01_1/Ses04M_script01_1_M000.wav"
    wav.unlink()
    with pytest.raises(LabelError) as err:
        iemocap.load(root, allow_count_mismatch=True)
    message = str(err.value)
    assert "Ses04M_script01_1.txt:5" in message and str(wav) in message


def test_iemocap_repeated_utterance(tmp_path):
    root = make_iemocap(tmp_path / "iemocap")
    _edit_label_file(root, "Ses02F_impro01_M001", "Ses02F_impro01_F000")
    with pytest.raises(LabelError, match="already labelled at .*Ses02F_impro01.txt:3"):
        iemocap.load(root, allow_count_mismatch=True)


# --- records and dispatch ----------------------------------------------------------------


def test_load_dataset_names_and_unknown():
    assert DATASETS == ("iemocap", "emodb", "emovo", "synthetic", "ravdess", "cremad", "manifest")
    with pytest.raises(UsageError, match="unknown dataset 'timit'"):
        load_dataset("timit", Path("."))


def test_dataset_rejects_duplicates_and_unknown_labels():
    utt = Utterance("a", Path("a.wav"), "s1", "anger", 1.0)
    with pytest.raises(DataError, match="occurs twice"):
        Dataset("x", ("anger",), (utt, utt))
    with pytest.raises(LabelError, match="'joy' is not one of"):
        Dataset("x", ("anger",), (Utterance("b", Path("b.wav"), "s1", "joy", 1.0),))
    ds = Dataset("x", ("anger",), (utt,))
    with pytest.raises(LabelError, match="unknown label 'joy'"):
        label_index(ds, "joy")
    with pytest.raises(DataError, match="unknown utterance ids"):
        ds.select(["zzz"])
