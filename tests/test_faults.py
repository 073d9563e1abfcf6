"""Faults a user meets: bad flags, damaged inputs and checkpoints, full and read-only
disks, two runs at once. Each must end with its exit code (2 usage, 3 data) and one
`error:` line, no traceback, and lose nothing computed before."""

from pathlib import Path

import ml_collections
import pytest

from conftest import TINY, run
from configs import synthetic
from msjax.errors import UsageError
from msjax.validation import check_config


def one_error(done, code: int, *needles: str) -> str:
    """Asserts the exit code and a single `error:` line holding every needle."""
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- 1. validation before writing ---------------------------------------------------------

@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config.optim.batch_size=0"], "--config.optim.batch_size=0"),
        (["--config.image_size=(0, 0)"], "--config.image_size"),
        (["--config.optim.learning_rate=nan"], "--config.optim.learning_rate=nan"),
        (["--config.optim.batch_sise=4"], "did you mean --config.optim.batch_size"),
        (["--fold=-5"], "--fold=-5"),
        (["--fold=7"], "--fold=7"),
    ],
)
def test_bad_config_is_refused_before_the_workdir_is_written(tmp_path, args, needle):
    workdir = tmp_path / "run"
    one_error(run("train", f"--workdir={workdir}", *TINY, *args), 2, needle)
    # Only the synthetic corpus may have been generated: no config.json locks the workdir.
    assert not (workdir / "config.json").exists()


def test_data_dir_is_checked_before_writing(tmp_path):
    workdir = tmp_path / "run"
    one_error(run("train", "--dataset=emodb", f"--workdir={workdir}"), 2,
              "--data_dir is required for --dataset=emodb")
    done = run("train", "--dataset=emodb", f"--data_dir={tmp_path / 'emodbb'}",
               f"--workdir={workdir}")
    one_error(done, 3, "emodbb")
    assert not workdir.exists()


def _config(**changes) -> ml_collections.ConfigDict:
    config = synthetic.get_config()
    with config.unlocked():
        for name, value in changes.items():
            *parents, leaf = name.split("__")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


@pytest.mark.parametrize(
    "field,value",
    [
        ("optim__batch_size", 0), ("optim__eval_batch_size", -1), ("optim__num_epochs", 0),
        ("optim__patience", 0), ("optim__learning_rate", float("inf")),
        ("optim__learning_rate", 0.0), ("image_size", (62, 96)), ("image_size", (64,)),
        ("fold", -2), ("num_folds", -1), ("seed", -1), ("protocol", "kfold"),
        ("validation", "train"), ("compute_dtype", "float16"), ("model__dropout", 1.0),
        ("model__lstm_hidden", 0), ("features__hop_length", 0), ("feature_workers", -1),
    ],
)
def test_check_config_names_the_field(field, value):
    with pytest.raises(UsageError, match=field.split("__")[-1]):
        check_config(_config(**{field: value}))


def test_check_config_accepts_the_shipped_configs():
    check_config(synthetic.get_config())


def test_unknown_override_names_the_closest_field(tmp_path):
    done = run("predict", "--config.model.use_atention=false")  # predict has no --config
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = run("train", f"--workdir={tmp_path}", "--noconfig.model.use_atention")
    one_error(done, 2, "--config.model.use_atention", "--config.model.use_attention")
    assert not list(Path(tmp_path).iterdir())
