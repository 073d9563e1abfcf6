"""Cross-validation driver: `train_and_evaluate(config, workdir)`.

Loads the dataset, writes the folds, fills the feature cache, trains each fold
(skipping finished ones, resuming a killed one) and writes the reports:

  workdir/config.json        the resolved config
  workdir/folds.json         every fold's membership and class counts
  workdir/fold_XX/           checkpoints, result.json, predictions.csv, confusion.csv
                             (in fold_XX/seed_<seed>/ with config.seeds > 1: msjax.summary)
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

from msjax import distributed, inference, lock, progress, report, timing
from msjax import metrics as M
from msjax.audio import wav_header_problem
from msjax.cache import FeatureCache, audio_hash
from msjax.convert.download import alexnet_weights_file
from msjax.data import load_dataset, loader_options
from msjax.data.folds import Fold, class_weights, folds_to_dict, make_folds, summarize_folds
from msjax.data.records import Dataset
from msjax.data.synthetic import generate_corpus
from msjax.encoders import Encoder, load_configured_encoder
from msjax.errors import DataError, UsageError, writing
from msjax.features import FeatureConfig
from msjax.files import atomic_write, write_once
from msjax.image import fit_minmax
from msjax.summary import finished_runs, read_json, results_line, run_dirs, write_summary
from msjax.train import setup
from msjax.train.loop import FoldRunner
from msjax.train.pipeline import FeatureStore, cache_root
from msjax.train.steps import create_state, make_mesh, make_steps
from msjax.train.tsne import write_tsne
from msjax.validation import check_config

log = logging.getLogger(__name__)

# Fields that may differ when a workdir is reused: they change where or which
# folds run, not what a fold computes.
_RERUN_FIELDS = ("fold", "use_cache", "cache_dir", "tsne", "feature_workers")


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Dataset, list[Fold]]:
    """Checks the config, loads the dataset and builds its folds (no feature work)."""
    check_config(config)
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
        config.get("allow_damaged", False),
    )
    folds = make_folds(
        dataset, config.protocol, config.num_folds or None, config.seed, config.validation
    )
    class_weights(folds[0], _class_weights(config))  # an unknown mode fails before any work
    if config.fold >= len(folds):
        raise UsageError(f"--fold={config.fold}: {dataset.name} has folds 0..{len(folds) - 1}")
    return dataset, folds


def _class_weights(config: ml_collections.ConfigDict) -> str:
    # Configs saved before the field existed train unweighted.
    return config.optim.get("class_weights", "")


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


def dry_run(config: ml_collections.ConfigDict, workdir: Path) -> str:
    """The folds as `--dry_run` prints them: speakers and class counts per split."""
    dataset, folds = prepare_data(config, workdir)
    header = (
        f"{dataset.name}: {len(dataset)} utterances, {len(dataset.speakers)} speakers, "
        f"protocol {config.protocol}, validation {config.validation}, {len(folds)} folds"
    )
    return header + "\n" + summarize_folds(folds)


def _check_workdir(
    config: ml_collections.ConfigDict, workdir: Path, inputs: dict, folds: list[Fold]
) -> None:
    """Saves config.json, inputs.json and folds.json on a workdir's first run; refuses
    a run (or a --fold job) whose config, inputs (from `run_inputs`) or folds differ.

    Each file is created once, whole (`write_once`): of fold jobs starting together,
    one writes it and the others compare with it.
    """
    path = workdir / "config.json"
    current = json.loads(config.to_json_best_effort())
    previous = _save_once(path, current, "the run config")
    if previous is not None:
        changed = sorted(
            k for k in set(previous) | set(current)
            # A field added since the run started counts as unchanged.
            if k not in _RERUN_FIELDS and previous.get(k, current.get(k)) != current.get(k)
        )
        if changed:
            raise UsageError(
                f"{workdir}: was run with a different config ({', '.join(changed)} differ); "
                "use a new --workdir"
            )
    inputs_path = workdir / "inputs.json"
    previous = _save_once(inputs_path, inputs, "the run inputs")
    if previous is not None:
        changed = [_INPUTS[k] for k in _INPUTS if previous.get(k) != inputs[k]]
        if changed:
            raise UsageError(
                f"{workdir}: {' and '.join(changed)} changed since the run started "
                f"({inputs_path}); use a new --workdir"
            )
    folds_path = workdir / "folds.json"
    current = json.loads(report.json_bytes(folds_to_dict(folds)))
    previous = _save_once(folds_path, current, "the folds")
    if previous is not None and previous != current:
        raise UsageError(
            f"{folds_path}: the run was started on different folds; use a new --workdir"
        )


def _save_once(path: Path, obj: dict, what: str) -> dict | None:
    """Creates `path` holding `obj` as JSON; None, or the JSON already there."""
    existing = write_once(path, report.json_bytes(obj), what)
    if existing is None:
        return None
    try:
        return json.loads(existing)
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err}); use a new --workdir") from None


# What a run's results depend on besides its config, as `_check_workdir` names it.
_INPUTS = {
    "utterances": "the dataset's utterance list",
    "audio": "the dataset's audio content",
    "encoder": "the SSL encoder's weights",
}


def run_inputs(dataset: Dataset, encoder: Encoder) -> dict[str, str]:
    """SHA-256 digests of the utterance list (ids and labels), of every audio file's
    bytes and the encoder's identity: what a rerun must find unchanged."""
    utterances = hashlib.sha256()
    audio = hashlib.sha256()
    for utt in dataset.utterances:
        utterances.update(f"{utt.uid}\t{utt.label}\n".encode())
        audio.update(audio_hash(utt.path).encode())
    return {
        "utterances": utterances.hexdigest(), "audio": audio.hexdigest(),
        "encoder": encoder.identity,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs the cross-validation the config describes; returns results.json's content.

    Rerunning with the same workdir resumes: finished folds are skipped and a
    fold that was interrupted continues from its last saved epoch. A whole run
    holds the workdir's lock, a --fold=k run only its fold's (msjax.lock). In a
    multi-process run (msjax.distributed) process 0 holds the locks and writes
    the files; every process trains on its rows of each batch.
    """
    workdir = Path(workdir)
    start = time.time()
    # Everything that can be checked is checked before the workdir is written to.
    dataset, folds = prepare_data(config, workdir)
    if config.model.use_spectrogram and not config.model.baseline:
        # Download ImageNet AlexNet (or fail offline) before any feature work.
        alexnet_weights_file(config.model.alexnet_weights, config.model.random_alexnet)
    encoder = load_configured_encoder(config.ssl, seed=config.seed)
    inputs = run_inputs(dataset, encoder)
    with contextlib.ExitStack() as stack:
        if config.fold < 0:
            stack.enter_context(_main_holds(workdir))
        else:
            lock.check_free(workdir)
            with writing(workdir, "the run directory"):
                workdir.mkdir(parents=True, exist_ok=True)
        # Process 0 writes the run files; the others then compare with them.
        distributed.main_first(
            "workdir files", lambda: _check_workdir(config, workdir, inputs, folds)
        )
        return _train_folds(config, workdir, dataset, folds, encoder, start)


@contextlib.contextmanager
def _main_holds(directory: Path) -> Iterator[None]:
    """Holds `directory`'s lock (msjax.lock) for the block: in a multi-process run,
    process 0 holds it for all, and the others stop if it could not."""
    with contextlib.ExitStack() as stack:
        distributed.main_first(
            f"lock {directory}", lambda: stack.enter_context(lock.hold(directory)),
            others=lambda: None,
        )
        yield


def _train_folds(config, workdir: Path, dataset: Dataset, folds, encoder, start: float) -> dict:
    """train_and_evaluate's work once the workdir is checked and locked."""
    labels = dataset.labels
    feature_cfg = FeatureConfig(**config.features)
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
                continue
            with _main_holds(run_dir):
                params = setup.init_params(
                    _with_seed(config, seed), model, feature_cfg, encoder, fold.index
                )
                metadata = setup.checkpoint_metadata(config, dataset, feature_cfg, encoder, fold)
                weights = class_weights(fold, _class_weights(config))
                result = run_fold(
                    dataclasses.replace(runner, seed=seed), run_dir, fold, entries, params, tx,
                    metadata, labels, weights,
                )
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


def _with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """`config` initialising the head with `seed` (the folds and a random encoder keep
    config.seed)."""
    if seed == config.seed:
        return config
    seeded = ml_collections.ConfigDict(config.to_dict())
    seeded.seed = seed
    return seeded


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
        report.write_json(result, fold_dir / "result.json")
    distributed.barrier(f"{fold_dir} written")  # every process sees the fold finished
    return result


def _fit_norm(store: FeatureStore, train: list) -> dict[str, np.ndarray]:
    """Per-bin spectrogram range {"lo", "hi"} [F] of the training segments; each
    process reads its share of them (msjax.distributed)."""
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
