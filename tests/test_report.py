"""Tests for the run artifacts: CSV, PNG, tables, JSON, environment, t-SNE."""

import csv
import json
import subprocess

import numpy as np
import pytest
from conftest import REPO, unavailable

from msjax.io.files import write_json
from msjax.results import plots, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["anger", "sadness", "happiness", "neutral"]
CM = np.array(
    [
        [50, 3, 5, 2],
        [1, 40, 0, 9],
        [7, 2, 30, 11],
        [0, 0, 0, 0],  # a class with no test items
    ]
)


def test_confusion_csv_round_trips(tmp_path):
    path = tmp_path / "out" / "cm.csv"
    report.write_confusion_csv(CM, LABELS, path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true\\pred", *LABELS]
    assert [r[0] for r in rows[1:]] == LABELS
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], dtype=np.int64), CM)

    cm, labels = report.read_confusion_csv(path)
    assert labels == LABELS and cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)
    assert [p.name for p in path.parent.iterdir()] == ["cm.csv"]  # no temporary left


def test_confusion_csv_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match="4 labels"):
        report.write_confusion_csv(np.zeros((3, 3), dtype=int), LABELS, tmp_path / "cm.csv")


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_png(tmp_path, normalize):
    path = tmp_path / f"cm_{normalize}.png"
    plots.plot_confusion_png(CM, LABELS, path, normalize=normalize, title="EMODB, all folds")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000


def test_format_table_aligns_values():
    rows = [
        {"fold": 1, "speaker": "03", "WA": 72.1, "UA": 72.912},
        {"fold": 10, "speaker": "16", "WA": 68.0, "UA": None},
        {"fold": "mean ± std", "WA": (70.05, 2.05), "UA": (72.91, 0.0)},
    ]
    text = report.format_table(rows, ["fold", "speaker", "WA", "UA"])
    lines = text.splitlines()
    assert lines[0].split() == ["fold", "speaker", "WA", "UA"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["1", "03", "72.10", "72.91"]
    assert lines[3].split() == ["10", "16", "68.00", "-"]
    assert "70.05 ± 2.05" in lines[4] and "72.91 ± 0.00" in lines[4]
    # Numeric columns are right-aligned: their values end in the same column.
    wa_end = lines[0].index("WA") + len("WA")
    wa_width = len("70.05 ± 2.05")
    assert lines[2].index("72.10") + 5 == lines[3].index("68.00") + 5
    assert lines[4].index("70.05") + wa_width == lines[2].index("72.10") + 5
    assert wa_end <= lines[4].index("70.05") + wa_width
    assert report.format_table([{"a": 0.123456}], ["a"], digits=3).splitlines()[2] == "0.123"


def test_format_mean_std():
    assert report.format_mean_std(72.1, 1.234) == "72.10 ± 1.23"
    assert report.format_mean_std(0.5, 0.25, digits=1) == "0.5 ± 0.2"


def test_write_json_round_trips_and_converts(tmp_path):
    obj = {
        "protocol": "loso",
        "seeds": [0, 1],
        "folds": [{"wa": 0.7, "cm": CM.tolist()}],
        "nested": {"ok": True, "none": None},
    }
    path = tmp_path / "a" / "results.json"
    write_json(obj, path)
    assert json.loads(path.read_text()) == obj

    write_json(
        {
            "cm": CM,
            "wa": np.float32(0.5),
            "n": np.int64(3),
            "bad": float("nan"),
            "shape": (2, 3),
            "dir": tmp_path,
        },
        path,
    )
    got = json.loads(path.read_text())
    assert got == {
        "cm": CM.tolist(),
        "wa": 0.5,
        "n": 3,
        "bad": None,
        "shape": [2, 3],
        "dir": str(tmp_path),
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_environment_info_lists_versions(tmp_path):
    info = report.environment_info()
    for key in (
        "python",
        "jax",
        "flax",
        "optax",
        "orbax",
        "transformers",
        "librosa",
        "numpy",
        "sklearn",
        "jax_devices",
        "git_revision",
    ):
        assert key in info
    assert info["numpy"] == np.__version__
    assert info["jax_devices"] and all(isinstance(d, str) for d in info["jax_devices"])
    json.dumps(info)
    # Outside any git checkout the revision is unknown, not an error.
    assert report.environment_info(tmp_path)["git_revision"] is None


def test_environment_info_describes_this_checkout_by_default():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode:
        unavailable(f"{REPO} is not a git checkout")
    assert report.environment_info()["git_revision"] == head.stdout.strip()


def test_environment_info_reads_git_revision(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("x")
    git("add", "f.txt")
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "m",
    )
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    info = report.environment_info(tmp_path)
    assert info["git_revision"] == head and info["git_dirty"] is False
    (tmp_path / "f.txt").write_text("y")
    assert report.environment_info(tmp_path)["git_dirty"] is True


def test_plot_tsne_on_small_set(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    features = rng.standard_normal((30, 16)) + 4.0 * labels[:, None]
    path = tmp_path / "tsne.png"
    embedding = plots.plot_tsne(features, labels, ["ang", "sad", "neu"], path, title="t", seed=0)
    assert embedding.shape == (30, 2) and np.all(np.isfinite(embedding))
    assert path.read_bytes()[:8] == PNG_MAGIC
    again = plots.plot_tsne(features, labels, ["ang", "sad", "neu"], tmp_path / "b.png", seed=0)
    np.testing.assert_allclose(again, embedding)


def test_plot_tsne_tiny_and_bad_input(tmp_path):
    emb = plots.plot_tsne(
        np.arange(8.0).reshape(4, 2), [0, 1, 0, 1], ["a", "b"], tmp_path / "t.png"
    )
    assert emb.shape == (4, 2)
    with pytest.raises(ValueError, match="N >= 2"):
        plots.plot_tsne(np.zeros((1, 3)), [0], ["a"], tmp_path / "x.png")
