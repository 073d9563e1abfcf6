"""Manifest corpora: formats, label options, every bad-row report, the protocols, and
EMODB written as a manifest giving exactly what the EMODB loader gives."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run

from msjax.configs import manifest as manifest_config
from msjax.data import emodb, load_dataset, manifest
from msjax.data.folds import make_folds
from msjax.errors import DataError, UsageError
from msjax.features.acoustic import FeatureConfig
from msjax.features.cache import FeatureCache
from msjax.features.store import FeatureStore
from msjax.train.run import prepare_data


def write_wav(path: Path, n: int = 320) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(n) / 5.0), 16000, subtype="PCM_16")


def write_csv(path: Path, header: str, lines: list[str], sep: str = ",") -> Path:
    path.write_text("\n".join([header.replace(",", sep)] + [x.replace(",", sep) for x in lines]))
    return path


def corpus(root: Path, speakers=("s1", "s2", "s3", "s4"), labels=("neu", "ang", "hap"), n=2):
    """Rows of a small corpus whose wav files exist under root/wav."""
    rows = []
    for spk in speakers:
        for label in labels:
            for i in range(n):
                rel = f"wav/{spk}_{label}_{i}.wav"
                write_wav(root / rel)
                rows.append(
                    {
                        "path": rel,
                        "emotion": label,
                        "speaker": spk,
                        "session": f"g{int(spk[1:]) % 2}",
                        "split": "",
                        "extra": "x",
                    }
                )
    return rows


def test_csv_tsv_jsonl_give_one_dataset(tmp_path):
    rows = corpus(tmp_path)
    loaded = []
    for suffix in (".csv", ".tsv", ".jsonl"):
        manifest.write(rows, tmp_path / f"list{suffix}")
        loaded.append(manifest.load(tmp_path / f"list{suffix}"))
    assert loaded[0] == loaded[1] == loaded[2]
    ds = loaded[0]
    assert ds.labels == ("ang", "hap", "neu")  # the data's labels, sorted
    assert len(ds) == 24 and ds.speakers == ("s1", "s2", "s3", "s4")
    assert ds.sessions == ("g0", "g1")
    assert (
        ds.utterances[0].uid == "s1_ang_0"
        and ds.utterances[0].path == tmp_path / "wav/s1_ang_0.wav"
    )


def test_extra_columns_absolute_paths_and_colliding_stems(tmp_path):
    write_wav(tmp_path / "a" / "x.wav")
    write_wav(tmp_path / "b" / "x.wav")
    other = tmp_path / "elsewhere" / "y.wav"
    write_wav(other)
    (tmp_path / "m").mkdir()
    path = write_csv(
        tmp_path / "m" / "list.csv",
        "path,emotion,notes",
        ["../a/x.wav,sad,hello", "../b/x.wav,sad,", f"{other},joy,z"],
    )
    ds = manifest.load(path)
    assert sorted(u.uid for u in ds.utterances) == sorted(
        ["../a/x", "../b/x", other.with_suffix("").as_posix()]
    )
    assert {u.speaker for u in ds.utterances} == {""}


def test_labels_order_and_label_map(tmp_path):
    rows = corpus(tmp_path, labels=("neu", "ang", "exc", "oth"), n=1)
    manifest.write(rows, tmp_path / "list.csv")
    ds = load_dataset(
        "manifest", tmp_path / "list.csv", labels="neu,ang,hap", label_map="exc:hap,oth:"
    )
    assert ds.labels == ("neu", "ang", "hap")
    assert ds.class_counts() == {"neu": 4, "ang": 4, "hap": 4}  # oth dropped, exc merged
    with pytest.raises(UsageError, match="--config.label_map entry 'exc'"):
        manifest.load(tmp_path / "list.csv", label_map="exc")


def _mixed_case_manifest(root: Path) -> Path:
    """A manifest whose labels are typed as people type them: in any case, with spaces."""
    lines = []
    for spk in ("s1", "s2", "s3", "s4"):
        for i, written in enumerate(
            ("Angry", "angry", " ANGRY ", "neutral", "Very  Happy", "very happy")
        ):
            write_wav(root / f"wav/{spk}_{i}.wav")
            lines.append(f"wav/{spk}_{i}.wav,{written},{spk}")
    return write_csv(root / "list.csv", "path,emotion,speaker", lines)


def test_labels_differing_in_case_or_spaces_are_one_class(tmp_path, caplog):
    path = _mixed_case_manifest(tmp_path)
    with caplog.at_level(logging.INFO, logger="msjax"):
        ds = manifest.load(path)
    assert ds.labels == ("angry", "neutral", "very happy")
    assert ds.class_counts() == {"angry": 12, "neutral": 4, "very happy": 8}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
        "WARNING",
        f"{path}: labels ignore case and spaces: 'ANGRY' -> 'angry' (4 rows), 'Angry' -> "
        "'angry' (4 rows), 'Very  Happy' -> 'very happy' (4 rows)",
    )]
    # --config.labels and --config.label_map follow the same rule.
    ds = manifest.load(path, labels=" Neutral,ANGRY", label_map="VERY HAPPY:Neutral")
    assert ds.labels == ("neutral", "angry")
    assert ds.class_counts() == {"neutral": 12, "angry": 12}


def test_a_run_starts_with_its_classes_and_their_counts(tmp_path, caplog):
    config = manifest_config.get_config()
    config.data_dir = str(_mixed_case_manifest(tmp_path))
    config.labels, config.label_map = "Neutral,Angry", "very HAPPY:"
    with caplog.at_level(logging.INFO, logger="msjax"):
        prepare_data(config, tmp_path / "run")
    assert "2 classes: neutral 4, angry 12" in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    "labels, label_map, problem",
    [
        ("", "exc:hap:x", "--config.label_map entry 'exc:hap:x': more than one ':'; expected "
         "raw:label (or raw: to drop)"),
        ("", ":hap", "--config.label_map entry ':hap': the label before ':' is empty"),
        ("", "exc:hap,exc:neu",
         "--config.label_map: 'exc' is mapped twice ('exc:hap' and 'exc:neu')"),
        ("", "exc:hap,oth:,EXC:neu",
         "--config.label_map: 'exc' is mapped twice ('exc:hap' and 'EXC:neu')"),
        ("", "exc:hap,hap:neu", "--config.label_map: 'exc:hap' maps to 'hap', which 'hap:neu' "
         "maps again (each label is mapped once); map 'exc' to the final label"),
        ("neu,ang,hap", "exc:happy",
         "--config.label_map: maps to 'happy', not one of --config.labels=neu,ang,hap"),
        ("neu,ang,Neu", "", "--config.labels: 'neu' and 'Neu' are the same label 'neu'"),
    ],
)
def test_malformed_label_options_are_one_line_naming_the_field(tmp_path, labels, label_map,
                                                                problem):
    manifest.write(corpus(tmp_path, labels=("neu", "ang", "hap", "exc"), n=1),
                   tmp_path / "list.csv")
    with pytest.raises(UsageError) as err:
        manifest.load(tmp_path / "list.csv", labels=labels, label_map=label_map)
    assert str(err.value).startswith(problem) and "\n" not in str(err.value)


def test_label_map_entries_no_row_has_are_a_warning(tmp_path, caplog):
    manifest.write(corpus(tmp_path, labels=("neu", "ang", "exc"), n=1), tmp_path / "list.csv")
    with caplog.at_level(logging.INFO, logger="msjax"):
        ds = manifest.load(tmp_path / "list.csv", label_map="exc:ang,Fru:,xxx:")
    assert ds.class_counts() == {"ang": 8, "neu": 4}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
        "WARNING",
        f"{tmp_path / 'list.csv'}: --config.label_map: no row is labelled 'fru', 'xxx' "
        "(the data's labels: ang, exc, neu)",
    )]


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    rows = corpus(tmp_path, speakers=("s1",), labels=("ang", "neu"), n=2)
    (tmp_path / "wav" / "broken.wav").write_bytes(b"not audio at all")
    lines = [f"{r['path']},{r['emotion']},s1" for r in rows] + [
        "wav/gone1.wav,ang,s1",
        "wav/broken.wav,neu,s1",
        f"{rows[0]['path']},ang,s1",
        "wav/gone2.wav,sad,s1",
        "wav/s1_neu_1.wav,,s1",
    ]
    path = write_csv(tmp_path / "list.csv", "path,emotion,speaker", lines)
    with pytest.raises(DataError) as err:
        manifest.load(path, labels="ang,neu")
    message = str(err.value).splitlines()
    assert message[0] == f"{path}: 7 problem(s)"
    body = "\n".join(message[1:])
    assert f"{path}:6: wav/gone1.wav: no such file" in body
    assert f"{path}:7: " in body and "broken.wav: cannot read audio header" in body
    assert f"{path}:8: wav/s1_ang_0.wav: duplicate path (also on line 2)" in body
    assert f"{path}:9: wav/gone2.wav: label 'sad' is not one of ang, neu" in body
    assert f"{path}:9: wav/gone2.wav: no such file" in body
    assert f"{path}:10: wav/s1_neu_1.wav: empty emotion" in body
    assert f"{path}:10: wav/s1_neu_1.wav: duplicate path (also on line 5)" in body


@pytest.mark.parametrize(
    "content, match",
    [
        ("file,emotion\nx.wav,ang", "missing column\\(s\\) path \\(columns: file, emotion\\)"),
        ("path,emotion\n", "no utterances"),
    ],
)
def test_bad_manifest_files(tmp_path, content, match):
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        manifest.load(tmp_path / "list.csv")


def test_bad_manifest_names(tmp_path):
    with pytest.raises(DataError, match="must end in .csv, .tsv, .jsonl"):
        manifest.load(tmp_path / "list.txt")
    with pytest.raises(DataError, match="manifest not found"):
        manifest.load(tmp_path / "list.csv")
    (tmp_path / "list.jsonl").write_text('{"path": "a.wav", "emotion": "x"}\n[1]\n')
    with pytest.raises(DataError, match="list.jsonl:2: not a JSON object"):
        manifest.load(tmp_path / "list.jsonl")


def test_protocols_on_a_manifest(tmp_path):
    rows = corpus(tmp_path)
    for i, row in enumerate(rows):
        row["split"] = ("train", "train", "val", "test")[i % 4]
    manifest.write(rows, tmp_path / "list.csv")
    ds = manifest.load(tmp_path / "list.csv")

    loso = make_folds(ds, "loso")
    assert [f.test_speakers for f in loso] == [("s1",), ("s2",), ("s3",), ("s4",)]

    # g0 = s2, s4; g1 = s1, s3: two groups cannot hold out a validation group...
    with pytest.raises(UsageError, match="needs 2 groups outside every test fold"):
        make_folds(ds, "group")
    group = make_folds(ds, "group", validation="test")
    assert [f.test_speakers for f in group] == [("s2", "s4"), ("s1", "s3")]

    (split,) = make_folds(ds, "split")
    by_uid = ds.by_uid()
    for name in ("train", "val", "test"):
        assert {by_uid[u].split for u in split.split(name)} == {name}
    with pytest.raises(UsageError, match="gives 1 fold"):
        make_folds(ds, "split", num_folds=3)

    with pytest.raises(
        DataError, match=r"needs every class to have >= 9 utterances \(smallest: ang has 8\)"
    ):
        make_folds(ds, "stratified", num_folds=9)


def test_split_without_val_rows_holds_out_from_train(tmp_path):
    rows = corpus(tmp_path, n=4)
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 4 == 0 else "train"
    manifest.write(rows, tmp_path / "list.csv")
    (fold,) = make_folds(manifest.load(tmp_path / "list.csv"), "split")
    assert len(fold.test) == 12 and len(fold.val) == 4 and len(fold.train) == 32
    assert (
        sum(fold.class_counts["val"].values()) == 4 and min(fold.class_counts["val"].values()) >= 1
    )
    assert not set(fold.val) & set(fold.train)


def test_protocols_refuse_missing_fields(tmp_path):
    rows = corpus(tmp_path, n=3)
    for row in rows:
        row.pop("speaker"), row.pop("session")
    manifest.write(rows, tmp_path / "list.csv")
    ds = manifest.load(tmp_path / "list.csv")
    for protocol, what in [("loso", "a speaker"), ("group", "a session"), ("split", "a split")]:
        with pytest.raises(DataError, match=f"protocol '{protocol}' needs {what}"):
            make_folds(ds, protocol)
    assert len(make_folds(ds, "stratified", num_folds=3)) == 3


@pytest.fixture(scope="module")
def emodb_pair(tmp_path_factory, emodb_dir):
    direct = emodb.load(emodb_dir)
    path = tmp_path_factory.mktemp("m") / "emodb.csv"
    manifest.write(manifest.dataset_rows(direct, path.parent), path)
    return direct, manifest.load(path, labels=",".join(emodb.LABELS))


def test_emodb_as_manifest_gives_the_same_folds(emodb_pair):
    direct, listed = emodb_pair
    assert listed.labels == direct.labels
    assert [
        (u.uid, u.path.resolve(), u.speaker, u.label, u.duration) for u in listed.utterances
    ] == [(u.uid, u.path.resolve(), u.speaker, u.label, u.duration) for u in direct.utterances]
    for protocol in ("loso", "stratified"):
        a, b = make_folds(direct, protocol, seed=3), make_folds(listed, protocol, seed=3)
        assert [(f.train, f.val, f.test, f.class_counts) for f in a] == [
            (f.train, f.val, f.test, f.class_counts) for f in b
        ]


def test_emodb_as_manifest_reuses_the_same_cache_entries(emodb_pair, tmp_path):
    direct, listed = emodb_pair
    cfg = FeatureConfig(segment_seconds=1.0)
    few = lambda ds: type(ds)(ds.name, ds.labels, ds.utterances[::180])  # noqa: E731
    cache = FeatureCache(tmp_path / "cache")
    first = FeatureStore(cache, cfg, workers=1).prepare(few(direct))
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*.npz"))
    cache.reset_stats()
    store = FeatureStore(cache, cfg, workers=1)
    second = store.prepare(few(listed))
    assert cache.stats.writes == 0 and cache.stats.hits == 2 * len(second) == 6
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*.npz")) == files
    for uid, entry in second.items():
        a = store.load(first[uid], ["acoustic"])
        b = store.load(entry, ["acoustic"])
        assert all(np.array_equal(a[k], b[k]) for k in ("mfcc", "spec"))


def test_jsonl_numbers_become_strings(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    lines = [
        {"path": "a.wav", "emotion": "x", "speaker": 7},
        {"path": "b.wav", "emotion": "y", "speaker": 8},
    ]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert manifest.load(tmp_path / "l.jsonl").speakers == ("7", "8")


def test_bin_train_reads_label_options_from_the_config(tmp_path):
    rows = corpus(tmp_path, labels=("neu", "ang", "exc", "oth"), n=2)
    manifest.write(rows, tmp_path / "list.csv")
    args = [
        "--dataset=manifest",
        f"--data_dir={tmp_path / 'list.csv'}",
        f"--workdir={tmp_path / 'w'}",
        "--config.labels=neu,ang,hap",
        "--config.label_map=exc:hap,oth:",
        "--dry_run",
    ]
    done = run("train", *args, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("manifest: 24 utterances, 4 speakers, protocol loso")
    assert "  neu   ang   hap  speakers" in done.stdout
    bad = run("train", *args[:-3], "--config.labels=neu,ang", timeout=300)
    assert bad.returncode == 3
    assert "label 'exc' is not one of neu, ang" in bad.stderr
