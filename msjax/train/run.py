"""Cross-validation driver: `train_and_evaluate(config, workdir)`.

Loads the dataset, writes the folds, fills the feature cache, trains each fold
(skipping finished ones, resuming a killed one) and writes the reports:

  workdir/config.json        the resolved config
  workdir/inputs.json        every clip's SHA-256, label and path; the encoder's identity
  workdir/folds.json         every fold's membership and class counts
  workdir/fold_XX/           checkpoints, result.json, predictions.csv, confusion.csv
                             (in fold_XX/seed_<seed>/ with config.seeds > 1: msjax.results.summary)
  workdir/results.json       protocol, seeds, versions, per-fold and mean ± std metrics
  workdir/confusion.{csv,png}  pooled over the test folds
  workdir/tsne_{plain,enhanced}.png  on request (config.tsne)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np
import optax

from msjax import inference
from msjax.convert.encoders import load_configured_encoder
from msjax.data import load_dataset, loader_options
from msjax.data.folds import SPLITS, Fold, class_weights, folds_to_dict, make_folds, summarize_folds
from msjax.data.records import Dataset
from msjax.data.synthetic import generate_corpus
from msjax.errors import DataError, UsageError, writing
from msjax.experiment.config import RERUN_FIELDS, ExperimentConfig
from msjax.features.audio import wav_header_problem
from msjax.features.cache import FeatureCache, audio_hash
from msjax.features.image import fit_minmax
from msjax.features.store import FeatureStore, cache_root
from msjax.io import lock
from msjax.io.files import atomic_write, json_bytes, write_json, write_once
from msjax.models.encoder import Encoder
from msjax.results import metrics as M
from msjax.results import report
from msjax.results.summary import finished_runs, read_json, results_line, run_dirs, write_summary
from msjax.runtime import distributed, interrupts, progress, timing
from msjax.train import setup
from msjax.train.loop import FoldRunner
from msjax.train.steps import create_state, make_mesh, make_steps
from msjax.train.tsne import write_tsne

log = logging.getLogger(__name__)


def prepare_data(
    config: ExperimentConfig | ml_collections.ConfigDict, workdir: Path
) -> tuple[Dataset, list[Fold]]:
    """Checks the config, loads the dataset (logging its classes and their counts) and builds
    its folds (no feature work)."""
    config = ExperimentConfig.build(config)
    root = setup.data_root(config, workdir)
    if config.dataset == "synthetic":
        # Idempotent: an existing corpus with the same settings is reused as it is
        # (so the other processes of a multi-process run find process 0's).
        def generate() -> None:
            with writing(root, "the synthetic corpus"):
                generate_corpus(root, **config.synthetic)

        distributed.main_first("synthetic corpus", generate)
    dataset = _without_damaged(
        load_dataset(config.dataset, root, **loader_options(config)),
        config.allow_damaged,
    )
    counts = dataset.class_counts()
    log.info("%d classes: %s", len(counts), ", ".join(f"{k} {n}" for k, n in counts.items()))
    folds = make_folds(
        dataset, config.protocol, config.num_folds or None, config.seed, config.validation
    )
    class_weights(folds[0], config.optim.class_weights)  # an unknown mode fails before any work
    if config.fold >= len(folds):
        raise UsageError(f"--fold={config.fold}: {dataset.name} has folds 0..{len(folds) - 1}")
    return dataset, folds


def _without_damaged(dataset: Dataset, allow: bool) -> Dataset:
    """The dataset minus truncated audio files (listed), or a DataError naming them."""
    damaged = [(u, p) for u in dataset.utterances if (p := wav_header_problem(u.path))]
    if not damaged:
        return dataset
    if not allow:
        first, problem = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise DataError(
            f"{first.path}: {problem}{more}; replace the file(s) or pass --allow_damaged "
            "to skip them"
        )
    for utt, problem in damaged:
        log.warning("skipping %s: %s", utt.path, problem)
    skipped = {u.uid for u, _ in damaged}
    kept = tuple(u for u in dataset.utterances if u.uid not in skipped)
    return dataclasses.replace(dataset, utterances=kept)


def dry_run(config: ExperimentConfig | ml_collections.ConfigDict, workdir: Path) -> str:
    """The folds as `--dry_run` prints them: speakers and class counts per split."""
    dataset, folds = prepare_data(config, workdir)
    header = (
        f"{dataset.name}: {len(dataset)} utterances, {len(dataset.speakers)} speakers, "
        f"protocol {config.protocol}, validation {config.validation}, {len(folds)} folds"
    )
    return header + "\n" + summarize_folds(folds)


def _check_workdir(
    config: ExperimentConfig, workdir: Path, inputs: dict, folds: list[Fold],
    alone: bool = True,
) -> None:
    """Saves config.json, inputs.json and folds.json on a workdir's first run, and
    compares a later run (or a --fold job) with them.

    Each file is created once, whole (`write_once`): of fold jobs starting together,
    one writes it and the others compare with it. A difference is refused, naming
    what differs with both values, once training has started or while another job
    uses the workdir (`alone` is False); otherwise the run before stopped before
    training (a bad clip, an interrupt) and its files are replaced, so the corrected
    command runs on the same workdir.
    """
    saved = {
        "config.json": (json.loads(json_bytes(config.to_dict())), "the run config"),
        "inputs.json": (inputs, "the run inputs"),
        "folds.json": (json.loads(json_bytes(folds_to_dict(folds))), "the folds"),
    }
    differences = {}
    for name, (current, what) in saved.items():
        previous = _save_once(workdir / name, current, what)
        if previous is None:
            continue
        try:
            difference = _DIFFERENCES[name](previous, current)
        except (KeyError, TypeError, AttributeError) as err:  # edited by hand
            raise DataError(
                f"{workdir / name}: not {what} as msjax writes it ({type(err).__name__}: "
                f"{err}); use a new --workdir"
            ) from None
        if difference:
            differences[name] = difference
    if not differences:
        return
    started = _training_started(workdir)
    if started is not None or not alone:
        name, difference = next(iter(differences.items()))
        why = (f"{started.name} has started training" if started is not None
               else "another job is using this workdir")
        raise UsageError(
            f"{workdir / name}: {difference}, and {why}; use a new --workdir"
        )
    for name, difference in differences.items():
        log.warning("%s: replaced (%s; no training had started)", workdir / name, difference)
        current, what = saved[name]
        atomic_write(workdir / name, lambda f, obj=current: f.write(json_bytes(obj)), what)


def _training_started(workdir: Path) -> Path | None:
    """The first fold directory holding a file a training left (a checkpoint, a result),
    or None; lock files do not count."""
    locks = {lock.LOCK_NAME, lock.GUARD_NAME, lock.USERS_NAME}
    for fold in sorted(workdir.glob("fold_*")):
        if any(p.name not in locks and not p.is_dir() for p in fold.rglob("*")):
            return fold
    return None


def _save_once(path: Path, obj: dict, what: str) -> dict | None:
    """Creates `path` holding `obj` as JSON; None, or the JSON already there."""
    existing = write_once(path, json_bytes(obj), what)
    if existing is None:
        return None
    try:
        return json.loads(existing)
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err}); use a new --workdir") from None


# How many changed fields, clips or utterances a message names.
_LISTED = 3


def _first(items: list[str], sep: str = ", ") -> str:
    """The first _LISTED of `items` joined by `sep`, and how many more there are."""
    more = f"{sep}and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return sep.join(items[:_LISTED]) + more


def _counted(items: list[str], noun: str, what: str) -> str:
    """`2 <noun>s <what>: a, b` ("" for none)."""
    if not items:
        return ""
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'} {what}: {_first(items)}"


def _config_difference(previous: dict, current: dict) -> str:
    """The config fields (dotted names) whose values differ, with both values; "" if none.

    A field added since the run started counts as unchanged; RERUN_FIELDS may differ.
    """
    old, new = dict(_leaves(previous)), dict(_leaves(current))
    changed = [
        f"{name}: {json.dumps(old[name])} -> "
        + (json.dumps(new[name]) if name in new else "absent")
        for name in sorted(old)
        if name.split(".")[0] not in RERUN_FIELDS and old[name] != new.get(name, _ABSENT)
    ]
    if not changed:
        return ""
    return f"the run was started with a different config ({_first(changed, '; ')})"


_ABSENT = object()


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted name, value) of every leaf of a JSON object."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _inputs_difference(previous: dict, current: dict) -> str:
    """What changed between two `run_inputs`: the encoder, and the clips whose audio
    changed and utterances added, removed or relabelled, by path; "" if nothing did."""
    changes = []
    if previous.get("encoder") != current["encoder"]:
        changes.append(
            f"the SSL encoder's weights ({previous.get('encoder')} -> {current['encoder']})"
        )
    if "clips" in previous:
        old, new = previous["clips"], current["clips"]
        both = sorted(old.keys() & new.keys())
        changes += [
            _counted([new[u]["path"] for u in both if old[u]["sha256"] != new[u]["sha256"]],
                     "clip", "with other audio"),
            _counted([new[u]["path"] for u in sorted(new.keys() - old.keys())],
                     "utterance", "added"),
            _counted([old[u]["path"] for u in sorted(old.keys() - new.keys())],
                     "utterance", "removed"),
            _counted([f"{new[u]['path']} {old[u]['label']} -> {new[u]['label']}"
                      for u in both if old[u]["label"] != new[u]["label"]],
                     "utterance", "relabelled"),
        ]
    else:
        # Written before per-clip hashes: only the digests over all clips compare.
        changed = [_INPUTS[k] for k in ("utterances", "audio") if previous.get(k) != current[k]]
        if changed:
            changes.append(
                f"{' and '.join(changed)} (this inputs.json predates per-clip hashes, so "
                "the clips cannot be named)"
            )
    changes = [c for c in changes if c]
    return f"changed since the run started: {'; '.join(changes)}" if changes else ""


def _folds_difference(previous: dict, current: dict) -> str:
    """The first fold split that differs, by its utterances or class counts; "" if none."""
    if previous == current:
        return ""
    detail = ""
    for key in ("protocol", "validation", "num_folds"):
        if previous.get(key) != current[key]:
            detail = f"{key}: {json.dumps(previous.get(key))} -> {json.dumps(current[key])}"
            break
    else:
        for old, new in zip(previous.get("folds", []), current["folds"]):
            split = next((s for s in SPLITS if old.get(s) != new[s]), None)
            if split is not None:
                detail = f"fold {new['index']} {split}: " + _split_difference(
                    old.get(split, {}), new[split]
                )
                break
    return "the run was started on different folds" + (f" ({detail})" if detail else "")


def _split_difference(old: dict, new: dict) -> str:
    """How one split of folds.json differs: utterances moved, else class counts."""
    saved, now = old.get("uids", []), new["uids"]
    moved = "; ".join(filter(None, (
        _counted(sorted(set(saved) - set(now)), "utterance", "only in the saved folds"),
        _counted(sorted(set(now) - set(saved)), "utterance", "only in this run's"),
    )))
    if moved:
        return moved
    return (f"class counts {json.dumps(old.get('class_counts'))} -> "
            f"{json.dumps(new['class_counts'])}")


_DIFFERENCES = {
    "config.json": _config_difference,
    "inputs.json": _inputs_difference,
    "folds.json": _folds_difference,
}

# What a run's results depend on besides its config, as `_check_workdir` names it.
_INPUTS = {
    "utterances": "the dataset's utterance list",
    "audio": "the dataset's audio content",
    "encoder": "the SSL encoder's weights",
}


def run_inputs(dataset: Dataset, encoder: Encoder) -> dict:
    """What a rerun must find unchanged: every clip's label, path and SHA-256 of its
    bytes ("clips", by uid), the encoder's identity, and the SHA-256 digests over the
    utterance list (ids and labels) and over all clips' hashes that inputs.json held
    before per-clip hashes (kept so such a run still resumes)."""
    utterances = hashlib.sha256()
    audio = hashlib.sha256()
    clips = {}
    for utt in dataset.utterances:
        digest = audio_hash(utt.path)
        utterances.update(f"{utt.uid}\t{utt.label}\n".encode())
        audio.update(digest.encode())
        clips[utt.uid] = {"label": utt.label, "path": str(utt.path), "sha256": digest}
    return {
        "utterances": utterances.hexdigest(), "audio": audio.hexdigest(),
        "encoder": encoder.identity, "clips": clips,
    }


def train_and_evaluate(
    config: ExperimentConfig | ml_collections.ConfigDict, workdir: str | Path
) -> dict:
    """Runs the cross-validation the config describes; returns results.json's content.

    Rerunning with the same workdir resumes: finished folds are skipped and a
    fold that was interrupted continues from its last saved epoch. A whole run
    holds the workdir's lock, a --fold=k run only its fold's (msjax.io.lock). In a
    multi-process run (msjax.runtime.distributed) process 0 holds the locks and writes
    the files; every process trains on its rows of each batch.
    """
    workdir = Path(workdir)
    start = time.time()
    config = ExperimentConfig.build(config)
    # Everything that can be checked is checked before the workdir is written to.
    dataset, folds = prepare_data(config, workdir)
    # Read whole (downloaded on first use) before any feature work.
    alexnet = setup.alexnet_weights(config)
    encoder = load_configured_encoder(config.ssl, seed=config.seed)
    inputs = run_inputs(dataset, encoder)
    with contextlib.ExitStack() as stack:
        if config.fold < 0:
            stack.enter_context(_main_holds(workdir))
        else:
            lock.check_free(workdir)
            with writing(workdir, "the run directory"):
                workdir.mkdir(parents=True, exist_ok=True)
        # Process 0 writes the run files; the others then compare with them, and
        # never replace them. Every process counts as a job using the workdir until
        # it ends (lock.share).
        distributed.main_first("workdir files", lambda: stack.enter_context(lock.share(
            workdir, lambda alone: _check_workdir(
                config, workdir, inputs, folds, alone and distributed.is_main()
            ),
        )))
        return _train_folds(config, workdir, dataset, folds, encoder, alexnet, start)


@contextlib.contextmanager
def _main_holds(directory: Path) -> Iterator[None]:
    """Holds `directory`'s lock (msjax.io.lock) for the block: in a multi-process run,
    process 0 holds it for all, and the others stop if it could not."""
    with contextlib.ExitStack() as stack:
        distributed.main_first(
            f"lock {directory}", lambda: stack.enter_context(lock.hold(directory)),
            others=lambda: None,
        )
        yield


def _train_folds(
    config, workdir: Path, dataset: Dataset, folds, encoder, alexnet: dict | None, start: float
) -> dict:
    """train_and_evaluate's work once the workdir is checked and locked."""
    labels = dataset.labels
    feature_cfg = config.features
    cache = FeatureCache(cache_root(config.cache_dir, workdir), enabled=config.use_cache)
    store = FeatureStore(
        cache, feature_cfg, None if config.ssl.finetune else encoder,
        workers=config.feature_workers or None,
    )
    log.info("preparing features for %d utterances", len(dataset))

    def prepare() -> list:
        with timing.section("features"):
            return store.prepare(dataset)

    # A shared cache is filled once, by process 0; the others then read it. Without
    # a cache every process computes its own copy.
    entries = distributed.main_first("features", prepare) if cache.enabled else prepare()
    stats = cache.stats
    log.debug("feature cache %s: %d entries reused, %d computed", cache.root, stats.hits,
              stats.writes)

    # One model and one pair of jitted steps for every fold: shapes agree, so
    # the steps compile once per run.
    mesh = make_mesh()
    model = inference.build_model(
        config.model, len(labels), feature_cfg, encoder, config.ssl.finetune
    )
    tx = optax.adam(config.optim.learning_rate)
    train_step, eval_step = make_steps(
        model, tx, mesh, image_size=tuple(config.image_size),
        normalize_wav=inference.wav_normalizer(encoder, config.ssl.finetune),
        compute_dtype=setup.compute_dtype(config),
    )
    train_step = timing.timed("train_step", train_step, block=True)
    eval_step = timing.timed("eval_step", eval_step, block=True)
    devices = mesh.devices.size
    log.debug("devices: %s", ", ".join(str(d) for d in mesh.devices.flat))
    runner = FoldRunner(
        store=store,
        kinds=setup.batch_kinds(config),
        train_step=train_step,
        eval_step=eval_step,
        batch_size=setup.round_up(config.optim.batch_size, devices),
        eval_batch_size=setup.round_up(config.optim.eval_batch_size, devices),
        num_epochs=config.optim.num_epochs,
        patience=config.optim.patience,
        seed=config.seed,
        data_sharding=setup.data_sharding(mesh),
        num_classes=len(labels),
    )
    run_folds = folds if config.fold < 0 else [folds[config.fold]]
    for fold in run_folds:
        for seed, run_dir in run_dirs(workdir, fold.index, config):
            if (run_dir / "result.json").exists():
                interrupts.kept(f"after fold {fold.index} finished ({run_dir})")
                continue
            with _main_holds(run_dir):
                params = setup.init_params(
                    _with_seed(config, seed), model, feature_cfg, encoder, fold.index, alexnet
                )
                metadata = setup.checkpoint_metadata(config, dataset, feature_cfg, encoder, fold)
                weights = class_weights(fold, config.optim.class_weights)
                result = run_fold(
                    dataclasses.replace(runner, seed=seed), run_dir, fold, entries, params, tx,
                    metadata, labels, weights,
                )
            interrupts.kept(f"after fold {fold.index} finished ({run_dir})")
            progress.line(
                "fold %d seed %d (test %s): WA %.4f UA %.4f F1 %.4f, best epoch %d (%.0f s)",
                fold.index, seed, ",".join(fold.test_speakers) or "-", result["wa"],
                result["ua"], result["f1"], result["best_epoch"], result["seconds"],
            )
    _, missing = finished_runs(workdir)
    if missing:
        progress.line(
            "%s not finished yet; results.json is written when all are (or by bin/summarize)",
            ", ".join(missing),
        )
        return {}

    def summarize() -> dict:
        results, table = write_summary(workdir)
        print(table, flush=True)
        return results

    results = distributed.main_first(
        "summary", summarize, others=lambda: read_json(workdir / "results.json")
    )
    if not distributed.is_main():
        return results
    if config.tsne and distributed.process_count() > 1:
        # Its checkpoint reads would wait for the other processes, which are done.
        log.warning(
            "t-SNE is not drawn by a multi-process run: rerun on one process with "
            "--workdir=%s --resume --tsne (finished folds are skipped)", workdir,
        )
    elif config.tsne:
        write_tsne(config, workdir, dataset, folds, entries, store, encoder)
    log.info("run took %.0f s", time.time() - start)
    print(results_line(workdir, results), flush=True)
    return results


def _with_seed(config: ExperimentConfig, seed: int) -> ExperimentConfig:
    """`config` initialising the head with `seed` (the folds and a random encoder keep
    config.seed)."""
    return dataclasses.replace(config, seed=seed)


def run_fold(
    runner: FoldRunner,
    fold_dir: Path,
    fold: Fold,
    entries: dict,
    params: dict,
    tx: optax.GradientTransformation,
    metadata: dict,
    labels: tuple[str, ...],
    weights: np.ndarray | None = None,
) -> dict:
    """Trains and tests one fold (loss weighted per class by `weights` [C] if given);
    writes and returns its result.json content."""
    start = time.time()
    fold_dir.mkdir(parents=True, exist_ok=True)
    splits = {name: [entries[u] for u in fold.split(name)] for name in ("train", "val", "test")}
    norm = _fit_norm(runner.store, splits["train"])
    state = create_state(params, tx, norm, class_weights=weights)
    out = runner.run(fold_dir, fold.index, state, splits, metadata)
    test, loop = out["test"], out["loop"]
    result = {
        "fold": fold.index,
        "seed": runner.seed,
        "dataset": metadata["dataset"],
        "test_speakers": list(fold.test_speakers),
        "val_speakers": list(fold.val_speakers),
        "best_epoch": loop["best_epoch"],
        "epochs_run": loop["epoch"],
        "best_val_score": loop["best_score"],
        "wa": test["wa"],
        "ua": test["ua"],
        "f1": test["f1"],
        "per_class_recall": dict(zip(labels, M.per_class_recall(test["cm"]).tolist())),
        "confusion": test["cm"].tolist(),
        "history": loop["history"],
        "seconds": time.time() - start,
    }
    if distributed.is_main():
        _write_predictions(fold_dir / "predictions.csv", test, labels)
        report.write_confusion_csv(test["cm"], labels, fold_dir / "confusion.csv")
        write_json(result, fold_dir / "result.json")
    distributed.barrier(f"{fold_dir} written")  # every process sees the fold finished
    return result


def _fit_norm(store: FeatureStore, train: list) -> dict[str, np.ndarray]:
    """Per-bin spectrogram range {"lo", "hi"} [F] of the training segments; each
    process reads its share of them (msjax.runtime.distributed)."""
    specs = (s for e in distributed.share(train) for s in store.load(e, ["acoustic"])["spec"])
    norm = fit_minmax(specs)
    lo, hi = distributed.all_min_max(norm.lo, norm.hi)
    return {"lo": lo, "hi": hi}


def _write_predictions(path: Path, test: dict, labels) -> None:
    probs = inference.probabilities(test["logprobs"])
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["uid", "label", "prediction", *[f"p_{name}" for name in labels]])
    for uid, label, p in zip(test["uids"], test["labels"], probs):
        writer.writerow([uid, labels[label], labels[int(p.argmax())], *np.round(p, 6)])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()), "the test predictions")
