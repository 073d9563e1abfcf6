"""msjax.runtime.timing: off it costs nothing; recording, a run reports each of its phases."""

import time

import jax.numpy as jnp
import pytest

from msjax.configs import synthetic
from msjax.runtime import timing


def test_off_section_does_nothing_and_timed_is_the_function():
    def step(x):
        return x + 1

    assert timing.timed("train_step", step) is step
    with timing.section("features"):
        pass  # nothing recorded, nowhere to fail


def test_recording_keeps_the_first_call_apart_and_counts():
    def step(x):
        time.sleep(0.01)
        return jnp.asarray(x) * 2

    with timing.recording({}) as totals:
        timed = timing.timed("train_step", step, block=True)
        assert [int(timed(k)) for k in range(3)] == [0, 2, 4]
        with timing.section("checkpoint"):
            time.sleep(0.01)
    assert totals["train_step_calls"] == 3 and totals["checkpoint_calls"] == 1
    assert totals["train_step_first"] >= 0.01 and totals["train_step"] >= 0.02
    assert totals["checkpoint_first"] >= 0.01 and "checkpoint" not in totals
    # Outside the block nothing is recorded any more.
    assert timing.timed("eval_step", step) is step


@pytest.mark.slow  # one tiny in-process training run (a fold, an epoch): ~30 s alone
@pytest.mark.usefixtures("fast_compile")
def test_a_run_reports_features_steps_and_checkpoints(tmp_path):
    from msjax.train.run import train_and_evaluate

    config = synthetic.get_config()
    config.synthetic.num_speakers, config.synthetic.utterances_per_emotion = 3, 2
    config.protocol, config.num_folds, config.fold = "stratified", 2, 0
    config.features.segment_seconds = 1.0
    config.image_size = (64, 96)
    config.model.lstm_hidden, config.model.branch_dim = 8, 16
    config.optim.num_epochs = 1
    config.optim.batch_size = config.optim.eval_batch_size = 8
    with timing.recording({}) as totals:
        train_and_evaluate(config, tmp_path / "run")
    for phase in ("features", "train_step", "eval_step", "checkpoint"):
        assert totals[f"{phase}_first"] > 0, phase
    assert totals["features_calls"] == 1
    assert totals["checkpoint_calls"] == 2  # epoch 1: the best model and the resume point
    assert totals["train_step_calls"] >= 1 and totals["eval_step_calls"] >= 2
