"""A run directory's files (msjax.io.rundir): where each lies, and that no other module
spells their names."""

import ast
import re

from conftest import REPO

from msjax.io import lock
from msjax.io.rundir import FoldRunDir, RunDir

# A run directory's file and directory names as a string literal (or an f-string's
# text) would spell them.
_NAMES = re.compile(
    r"""\b(?:config|inputs|folds|results?)\.json\b
      | \b(?:predictions|confusion|ablation)\.csv\b | \bconfusion\.png\b
      | \bablation\.(?:txt|json)\b | \btsne_ | \bfold_ | \bseed_
      | (?:^|/)(?:best|latest|cache|corpus)(?:/|$)
      | \.lock\b""",
    re.X,
)
# (module, literal) pairs that name something else.
_ELSEWHERE = {
    ("msjax/convert/hf.py", "config.json"),  # a Hugging Face model's config
    ("msjax/io/lock.py", ".lock"),  # the lock's own files, in any directory it locks
}


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes of a module and its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spelled(path) -> list[tuple[int, str]]:
    """(line, name) of each run-directory name in `path`'s string literals, docstrings
    and comments aside."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    return [
        (node.lineno, match.group())
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
        for match in _NAMES.finditer(node.value)
    ]


def test_only_rundir_spells_the_run_directory_names():
    rundir = REPO / "msjax" / "io" / "rundir.py"
    assert _spelled(rundir), "the pattern no longer finds the names rundir.py spells"
    spelled = [
        f"{module}:{line} spells {name!r}"
        for path in sorted((REPO / "msjax").rglob("*.py")) if path != rundir
        for module in [path.relative_to(REPO).as_posix()]
        for line, name in _spelled(path) if (module, name) not in _ELSEWHERE
    ]
    assert not spelled, "ask msjax.io.rundir instead:\n" + "\n".join(spelled)


def test_a_run_directory_names_its_files(tmp_path):
    run = RunDir(tmp_path)
    files = {
        "config.json": run.config, "inputs.json": run.inputs, "folds.json": run.folds,
        "results.json": run.results, "confusion.csv": run.confusion_csv,
        "confusion.png": run.confusion_png, "tsne_plain.png": run.tsne_plain,
        "tsne_enhanced.png": run.tsne_enhanced, "cache": run.cache, "corpus": run.corpus,
        "ablation.txt": run.ablation_txt, "ablation.csv": run.ablation_csv,
        "ablation.json": run.ablation_json, "no_mfcc/folds.json": run.variant("no_mfcc").folds,
    }
    assert {name: path.relative_to(tmp_path).as_posix() for name, path in files.items()} == {
        name: name for name in files
    }
    fold = run.fold(3)
    assert fold == FoldRunDir(tmp_path / "fold_03")
    assert [p.relative_to(fold.root).as_posix() for p in (
        fold.best, fold.latest, fold.result, fold.predictions, fold.confusion
    )] == ["best", "latest", "result.json", "predictions.csv", "confusion.csv"]
    assert run.runs(2, [7]) == [(7, FoldRunDir(tmp_path / "fold_02"))]
    assert run.runs(2, [7, 8]) == [
        (7, FoldRunDir(tmp_path / "fold_02" / "seed_7")),
        (8, FoldRunDir(tmp_path / "fold_02" / "seed_8")),
    ]


def test_results_are_found_in_fold_and_seed_order_and_locks_start_no_training(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "fold_01" / "seed_5").mkdir(parents=True)
    (tmp_path / "fold_00").mkdir()
    for name in (lock.LOCK_NAME, lock.GUARD_NAME, lock.USERS_NAME):
        (tmp_path / "fold_00" / name).write_text("")
    assert run.fold_dirs() == [tmp_path / "fold_00", tmp_path / "fold_01"]
    assert run.training_started() is None and run.result_files() == []
    for fold in (run.fold(0), run.runs(1, [5, 6])[0][1]):
        fold.result.write_text("{}")
        assert fold.finished()
    assert run.training_started() == tmp_path / "fold_00"
    assert run.result_files() == [
        tmp_path / "fold_00" / "result.json", tmp_path / "fold_01" / "seed_5" / "result.json"
    ]
