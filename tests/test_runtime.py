"""The XLA flags and host memory policy `runtime.configure` sets for the bin/ commands
(flags added once, never over a user's choice), and that importing msjax sets nothing."""

import os
import resource
import subprocess
import sys

import pytest

from msjax.runtime import settings as runtime

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


def test_configure_sets_a_flag_this_jax_accepts():
    code = (
        "import os; from msjax import runtime; runtime.configure(); import jax.numpy as jnp; "
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


# A fresh process importing every msjax module: records each C symbol looked up through
# ctypes (the allocator is set with glibc's mallopt) and compares the environment.
_IMPORT_ALL = r"""
import importlib, os, pkgutil, sys

looked_up = []
sys.addaudithook(lambda event, args: looked_up.append(args[1]) if event == "ctypes.dlsym" else None)
# jax and scikit-learn set variables of their own when imported: msjax must add none.
import jax._src.xla_bridge as xla_bridge
import sklearn

before = dict(os.environ)
import msjax

# The commands' modules each define their absl flags: one of them stands for all.
names = [m.name for m in pkgutil.walk_packages(msjax.__path__, "msjax.")
         if not m.name.startswith("msjax.cli.") or m.name == "msjax.cli.train"]
for name in names:
    importlib.import_module(name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(len(names), changed, sorted(set(map(str, looked_up))), xla_bridge.backends_are_initialized())
"""


def test_importing_msjax_changes_nothing_in_the_process():
    # A notebook user's JAX must stay as they set it up: no XLA flag, no allocator
    # setting, no backend started (which would fix XLA_FLAGS) by importing any module.
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": os.environ["HOME"]}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    count, rest = result.stdout.split(" ", 1)
    assert int(count) > 50  # every module was imported
    assert rest.strip() == "[] [] False"


# A child process: the allocator policy is process-wide, and a thread other than the
# main one allocates, as XLA's workers do. Prints the page faults of the second of two
# 256 MiB allocations (and the RSS freed by release_free_memory, in MiB).
_ALLOCATE = r"""
import ctypes, resource, sys, threading
from msjax.runtime import settings as runtime

if sys.argv[1] == "on":
    assert runtime.configure_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20
faults = []

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=work)
thread.start()
thread.join()
held = rss_mib()
runtime.release_free_memory()
print(faults[1], held - rss_mib())
"""


def _allocate(policy: str) -> tuple[int, float]:
    if runtime._glibc() is None or not os.path.exists("/proc/self/status"):
        pytest.skip("needs glibc and /proc")
    env = {k: v for k, v in os.environ.items() if k != runtime.MEMORY_OPT_OUT}
    result = subprocess.run(
        [sys.executable, "-c", _ALLOCATE, policy], capture_output=True, text=True, env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    faults, freed = result.stdout.split()
    return int(faults), float(freed)


def test_host_memory_policy_reuses_freed_buffers_and_releases_on_request():
    pages = (256 << 20) // resource.getpagesize()
    default_faults, _ = _allocate("off")
    faults, freed = _allocate("on")
    # glibc's default maps a fresh block and faults it in again (once per page, or per
    # huge page where transparent huge pages are always on); the policy reuses the block.
    assert faults < 0.01 * pages
    assert default_faults > faults + 50
    # Kept mapped for reuse until asked: then the freed 256 MiB goes back to the OS.
    assert freed > 200


def test_host_memory_opt_out():
    assert runtime.configure_host_memory({runtime.MEMORY_OPT_OUT: "0"}) is False


def test_commands_configure_the_process_before_their_main(monkeypatch):
    from msjax.cli import common

    calls = []
    monkeypatch.setattr(common.runtime, "configure", lambda: calls.append("policy"))
    monkeypatch.setattr(sys, "argv", ["prog"])
    with pytest.raises(SystemExit) as exit_:
        common.run(lambda: calls.append("main") or 0)
    assert exit_.value.code == 0
    assert calls == ["policy", "main"]
