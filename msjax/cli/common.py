"""Flags and error handling shared by the bin/ commands.

The config file is chosen by `--dataset` (configs/<dataset>.py) unless
`--config=path.py` is given; `--config.x=y` overrides any field, and the plain
flags below, when given, override both.
Exit codes: 0 success, 2 usage error, 3 data error, including damaged checkpoints
and disks that cannot be written (one-line messages); 130 after SIGINT (Ctrl-C) and
143 after SIGTERM, with one line saying what was kept (msjax.runtime.interrupts).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from msjax import runtime
from msjax.data import DATASETS
from msjax.errors import DataError, MsjaxError, UsageError
from msjax.experiment.config import (
    ExperimentConfig,
    PlainFlag,
    field_names,
    plain_flags,
    unknown_field_message,
)
from msjax.runtime import interrupts, progress

FLAGS = flags.FLAGS
flags.DEFINE_bool(
    "quiet", False, "Batch jobs: one line per epoch and fold, the results, warnings; no "
    "progress bars (-v/--verbosity=1 adds debug lines, 2 other libraries' logs)."
)


def config_file(dataset: str) -> Path:
    """configs/<dataset>.py (default.py for an unknown name; msjax.data.registry lists the
    corpora, each with its config file): the file of the installed
    `msjax.configs` package (the checkout's configs/ for an editable install)."""
    from msjax import configs  # only commands that run on a config need the package

    name = dataset if dataset in DATASETS else "default"
    return Path(configs.__file__).parent / f"{name}.py"


def _dataset_from_argv(argv: Sequence[str]) -> str:
    """The --dataset value, read before absl parses (it picks the config file)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--dataset="):
            return arg.split("=", 1)[1]
        if arg == "--dataset" and i + 1 < len(argv):
            return argv[i + 1]
    return "synthetic"


# The absl definition of a plain flag, by its field's type.
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, bool: flags.DEFINE_bool}


def define_run_flags() -> None:
    """Flags of every command that runs on a dataset config."""
    dataset = _dataset_from_argv(sys.argv)
    default = config_file(dataset)
    try:
        config_flags.DEFINE_config_file("config", str(default), "Config file.", lock_config=True)
    except (KeyError, AttributeError):
        # config_flags resolves --config.* overrides here and fails on an unknown field.
        print(f"error: {_unknown_override(sys.argv, default)}", file=sys.stderr)
        sys.exit(UsageError.exit_code)
    flags.DEFINE_enum("dataset", "synthetic", DATASETS, "Dataset; picks configs/<dataset>.py.")
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<dataset>).")
    for flag in plain_flags():
        _DEFINE[flag.kind](flag.name, None, flag.help)


def define_distributed_flags() -> None:
    """Flags of the commands that train: one training over several processes."""
    flags.DEFINE_bool(
        "distributed", None, "Join a multi-process run (JAX's distributed runtime); on by "
        "default under srun with several tasks or when JAX_COORDINATOR_ADDRESS is set, "
        "--nodistributed turns it off."
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (default "
        "$JAX_COORDINATOR_ADDRESS, or found under SLURM)."
    )
    flags.DEFINE_integer("num_processes", None, "Processes in the run (found under SLURM).")
    flags.DEFINE_integer("process_id", None, "This process's index (found under SLURM).")


def start_distributed() -> None:
    """Starts the distributed runtime when asked for (before any JAX computation);
    processes other than 0 then log warnings and errors only."""
    from msjax.runtime import distributed

    if not distributed.initialize(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    ):
        return
    if not distributed.current().is_main():
        # Process 0 speaks for the run: the others show warnings and errors only.
        progress.configure(quiet=True)
        logging.getLogger(progress.RECORD).setLevel(logging.WARNING)


def _unknown_override(argv: Sequence[str], default: Path) -> str:
    """The message for the first --config.<field> that the config file lacks."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), str(default))
    spec = importlib.util.spec_from_file_location("msjax_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    known = list(field_names(module.get_config()))
    for arg in argv:
        match = re.match(r"--(?:no)?config\.([^=]+)", arg)
        if match and match.group(1) not in known:
            return unknown_field_message(match.group(1), known)
    return f"{path}: a --config.* override does not match the config"


def _apply(config: ml_collections.ConfigDict, plain: Sequence[PlainFlag]) -> None:
    """Sets the fields of the `plain` flags given on the command line."""
    with config.unlocked():
        for flag in plain:
            value = FLAGS[flag.name].value
            if value is None:
                continue
            *parents, leaf = flag.field.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = not value if flag.invert else value


def resolved_config() -> ExperimentConfig:
    """The config file with --config.* overrides, then the plain flags applied; checked."""
    config = FLAGS.config
    if FLAGS["dataset"].present and config.dataset != FLAGS.dataset:
        raise UsageError(
            f"--dataset={FLAGS.dataset} but the config file is for {config.dataset!r}"
        )
    _apply(config, plain_flags())
    return ExperimentConfig.build(config)


# Flags that choose where, which folds or on how many processes a run runs, or what is
# shown (with the plain flags of the fields that may differ on a rerun); anything else
# changes what it computes.
_RESUME_FLAGS = (
    "workdir", "resume", "tsne", "dataset", "quiet", "verbosity",
    "distributed", "coordinator_address", "num_processes", "process_id",
    *(flag.name for flag in plain_flags() if flag.rerun),
)


def saved_config() -> ExperimentConfig:
    """The config saved in --workdir's config.json, with --fold and --no_cache applied.

    Raises:
        UsageError: no --workdir, nothing saved there, or flags that would change the run.
    """
    from msjax.io.rundir import RunDir

    if not FLAGS.workdir:
        raise UsageError("--resume needs the --workdir of the run to continue")
    path = RunDir(Path(FLAGS.workdir)).config
    if not path.is_file():
        raise UsageError(f"{path}: not found; there is no run to resume in {FLAGS.workdir}")
    names = [arg[2:].split("=", 1)[0] for arg in sys.argv[1:] if arg.startswith("--")]
    changing = sorted(
        f"--{name}" for name in names
        if name not in _RESUME_FLAGS and name.removeprefix("no") not in _RESUME_FLAGS
    )
    if changing:
        raise UsageError(
            f"--resume continues {path} as it was saved; drop {', '.join(changing)}"
        )
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    _apply(config, [flag for flag in plain_flags() if flag.rerun])
    return ExperimentConfig.build(config)


def workdir(config: ExperimentConfig) -> Path:
    """--workdir, or runs/<dataset> under the current directory."""
    return Path(FLAGS.workdir or Path("runs") / config.dataset)


def _parse(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(UsageError.exit_code)


def run(main: Callable[[], int | None]) -> None:
    """absl app with one-line errors and msjax exit codes; msjax's XLA flags and host
    memory policy (`runtime.configure`) are set before JAX starts."""
    runtime.configure()
    interrupts.install()

    def wrapped(argv: list[str]) -> int | None:
        progress.configure(FLAGS.verbosity, FLAGS.quiet)
        try:
            if len(argv) > 1:
                raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
            return main()
        except MsjaxError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except OSError as err:  # a disk or permission failure no caller named
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            return DataError.exit_code

    try:
        app.run(wrapped, flags_parser=_parse)
    except KeyboardInterrupt as err:  # absl lets it through; cleanup ran on the way out
        interrupts.uninstall()  # a second signal while Python exits ends it at once
        print(interrupts.line(), file=sys.stderr, flush=True)
        sys.exit(interrupts.exit_code(err))
