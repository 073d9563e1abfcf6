"""The package layout: layers that import only downward, no import cycle, every module
importable alone, the installed package list complete, and `import msjax` side-effect free."""

import ast
import os
import subprocess
import sys
import tomllib

from conftest import REPO

# Layers, lowest first: a module imports from its own layer or one below, never above.
LAYERS = (
    ("errors",),
    ("runtime",),
    ("io",),
    ("data",),
    ("features",),
    ("models", "results"),
    ("convert",),
    ("experiment",),
    ("inference",),
    ("train",),
    ("configs",),
    ("cli",),
)
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}


def _modules() -> dict[str, ast.Module]:
    """msjax's modules by dotted name (configs/ as msjax.configs), parsed."""
    found = {}
    for root, prefix in ((REPO / "msjax", "msjax"), (REPO / "configs", "msjax.configs")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = ast.parse(path.read_text(), str(path))
    return found


def _imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The msjax modules `name` imports anywhere in its file (function bodies too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("msjax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("msjax"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                out.add(child if child in modules else node.module)
    out.discard(name)
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}


def _group(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root


def test_every_module_imports_only_from_its_layer_or_below():
    graph = _graph()
    assert {g for m in graph if (g := _group(m))} <= set(RANK), "a package without a layer"
    upward = [
        f"{a} ({_group(a)}) imports {b} ({_group(b)})"
        for a, deps in sorted(graph.items()) for b in sorted(deps)
        if _group(a) and _group(b) and RANK[_group(b)] > RANK[_group(a)]
    ]
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]


# Imports the third-party libraries once, then forks a child per module that imports only
# that module: each msjax module is imported alone, in a process that has no other.
_ALONE = """
import importlib, os, sys, warnings
warnings.simplefilter("ignore")
for lib in ("jax", "flax.linen", "optax", "orbax.checkpoint", "numpy", "scipy.signal",
            "sklearn.metrics", "librosa", "soundfile", "transformers", "absl.flags",
            "ml_collections", "matplotlib.figure", "huggingface_hub", "tqdm"):
    importlib.import_module(lib)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            importlib.import_module(name)
        except BaseException as err:
            print(f"{name}: {type(err).__name__}: {err}", flush=True)
            code = 1
        os._exit(code)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print("FAILED", " ".join(failed))
"""


def test_every_module_imports_alone_in_a_fresh_process():
    names = sorted(_modules())
    done = subprocess.run(
        [sys.executable, "-c", _ALONE, *names], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1:] == ["FAILED"], done.stdout


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "msjax").rglob("__init__.py")
    } | {"msjax.configs"}
    assert listed == on_disk
