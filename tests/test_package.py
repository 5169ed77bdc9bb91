"""The package's lazy subpackages (bundle configs reach them as `monai_lung.<name>` after `import monai_lung`), and
the direction of its imports: no module, and no subpackage, imports one that imports it back."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import monai_lung

PACKAGE = Path(monai_lung.__file__).parent


@pytest.mark.parametrize("name", monai_lung._SUBPACKAGES)
def test_every_lazy_subpackage_imports(name):
    assert getattr(monai_lung, name) is importlib.import_module(f"monai_lung.{name}")


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="nodules"):
        monai_lung.nodules


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the monai_lung modules it imports anywhere in its text (function-local imports included)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            targets |= {t for t in found if t in files and t != name}
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_no_subpackage_imports_one_that_imports_it_back():
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(_subpackage(module), set()).update(_subpackage(t) for t in targets if _subpackage(t) != _subpackage(module))
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / "monai_lung"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from monai_lung.b import y\n")  # a function-local import counts
    (pkg / "b.py").write_text("from .a import x\n")
    graph = import_graph(pkg)
    assert graph["monai_lung.a.x"] == {"monai_lung.b"}
    assert cycles(graph) == [["monai_lung.a.x", "monai_lung.b"]]


_NOT_SOURCE = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "demo_output", "eval", "runs", "*.pt", "*.ts")


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    """A user's install: build the wheel, install it into a fresh --target folder, and from an empty folder run
    ``--help``, ``synth`` and ``train --dry-run``, which needs the bundle templates the wheel carries."""
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this python")
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(PACKAGE.parent, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "wheel").glob("monai_lung-*.whl")
    assert wheel.name.startswith(f"monai_lung-{monai_lung.__version__}-")
    target = tmp_path / "target"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1")

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], cwd=empty, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert run("-c", "import monai_lung; print(monai_lung.__file__)").strip() == str(target / "monai_lung" / "__init__.py")
    assert "train" in run("-m", "monai_lung", "--help")
    run("-m", "monai_lung", "synth", "data", "--num-scans", "3", "--size", "64", "--num-subsets", "3", "--seed", "1")
    plan = run("-m", "monai_lung", "train", "--profile", "demo", "--dry-run", "--data-dir", "data", "--annotations", "data/annotations.csv",
               "--fold", "0", "--work-dir", "work", "--output-bundle", "bundle")
    templates = target / "monai_lung" / "bundles"
    assert f"--config_file {empty / 'work' / 'train_stage1' / 'lung_nodule_ct_segmentation' / 'configs' / 'train.json'}" in plan
    assert (templates / "lung_nodule_ct_two_stage_detection" / "configs" / "inference.json").is_file()
    assert (target / "monai_lung" / "clinical" / "lungrads_v2022.json").is_file()  # the Lung-RADS table is package data
    assert sorted(p.name for p in empty.iterdir()) == ["data"]  # a dry run writes nothing
