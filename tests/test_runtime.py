"""The XLA flags msjax sets on import: added once, never over a user's choice."""

import subprocess
import sys

import pytest

from msjax import runtime

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


@pytest.fixture
def tested_jax(monkeypatch):
    monkeypatch.setattr(runtime, "_jax_version", lambda: runtime.TESTED_JAX + "2")


def test_adds_flags_to_existing_ones(tested_jax):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    added = runtime.apply_xla_defaults(env)
    assert added == [f"{FLAG}=-individual_convolution"]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {added[0]}"
    assert runtime.apply_xla_defaults(env) == []  # idempotent
    assert env["XLA_FLAGS"].count(FLAG) == 1


def test_user_setting_and_opt_out_win(tested_jax):
    env = {"XLA_FLAGS": f"{FLAG}=individual_dot"}
    assert runtime.apply_xla_defaults(env) == []
    assert env["XLA_FLAGS"] == f"{FLAG}=individual_dot"
    env = {runtime.OPT_OUT: "0"}
    assert runtime.apply_xla_defaults(env) == []
    assert "XLA_FLAGS" not in env


def test_untested_jax_gets_nothing(monkeypatch):
    # XLA aborts on a flag it does not know, so other releases are left alone.
    monkeypatch.setattr(runtime, "_jax_version", lambda: "0.99.0")
    env = {}
    assert runtime.apply_xla_defaults(env) == []
    assert env == {}


def test_importing_msjax_sets_a_flag_this_jax_accepts():
    code = (
        "import os, msjax, jax.numpy as jnp; "
        "print(float(jnp.ones(3).sum())); print(os.environ['XLA_FLAGS'])"
    )
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    total, flags = result.stdout.split("\n")[:2]
    assert total == "3.0"
    assert f"{FLAG}=-individual_convolution" in flags
