"""A regular (non-editable) install: the wheel holds msjax and its configs, and the
commands load every dataset's config from the installed copy, from any directory."""

import os
import shutil
import subprocess
import sys

from conftest import REPO

from msjax.cli.common import DATASETS

# The CLI's own steps: the config file common.config_file names, loaded by config_flags
# (whose import of `msjax.configs.default` needs the installed package too).
_LOAD_CONFIGS = """
import sys
from pathlib import Path
from ml_collections import config_flags
from absl import flags
import msjax
from msjax import configs
from msjax.cli import common
datasets = sys.argv[1:]
for name in datasets:
    config_flags.DEFINE_config_file(name, str(common.config_file(name)))
flags.FLAGS(["load"])
for name in datasets:
    print(name, flags.FLAGS[name].value.dataset)
print("from", Path(msjax.__file__).parent.parent, Path(configs.__file__).parents[2])
"""


def _python(*args: str, cwd, target) -> subprocess.CompletedProcess:
    """Python with `target` and the dependencies, without site's .pth files: an editable
    install of msjax (a path hook) would otherwise stand in for what the wheel lacks."""
    path = [str(target), *(p for p in sys.path if p.endswith("site-packages"))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_wheel_install_loads_every_config_from_anywhere(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("msjax", "configs"):  # configs/ installs as msjax.configs
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("msjax-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)

    done = _python("-c", _LOAD_CONFIGS, *DATASETS, cwd=elsewhere, target=target)
    lines = done.stdout.splitlines()
    assert lines[:-1] == [f"{name} {name}" for name in DATASETS]
    assert lines[-1] == f"from {target} {target}"  # not the checkout's

    workdir = elsewhere / "run"
    done = _python("-m", "msjax.cli.train", "--dataset=synthetic", f"--workdir={workdir}",
                   "--dry_run", cwd=elsewhere, target=target)
    assert done.stdout.startswith("synthetic: 112 utterances, 4 speakers")

    # Every command is installed as msjax-<name>, and bin/<name> runs the same function.
    import zipfile

    with zipfile.ZipFile(wheel) as whl:
        (entry,) = [n for n in whl.namelist() if n.endswith("entry_points.txt")]
        scripts = dict(
            line.split(" = ") for line in whl.read(entry).decode().splitlines() if " = " in line
        )
    wrappers = sorted(p.name for p in (REPO / "bin").iterdir())
    assert scripts == {
        f"msjax-{name.replace('_', '-')}": f"msjax.cli.{name}:run" for name in wrappers
    }
    for name in wrappers:
        assert f"from msjax.cli.{name} import run\n" in (REPO / "bin" / name).read_text()
    for script in ("msjax-summarize", "msjax-manifest"):
        # msjax's own flag handling answers: one line, exit 2.
        done = subprocess.run([str(target / "bin" / script), "--no_such_flag"],
                              capture_output=True, text=True, cwd=elsewhere,
                              env=dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu"))
        assert (done.returncode, done.stderr.splitlines()) == (
            2, ["error: Unknown command line flag 'no_such_flag'"]), done.stderr
