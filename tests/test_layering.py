"""Enforces DESIGN.md's layering table by parsing every import in the source tree."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("torch", "kfp", "apache_beam", "mlflow")

# (package prefix or file, folder, forbidden anywhere, forbidden at module level only)
RULES: list[tuple[str, list[str], list[str]]] = [
    ("recpipe/schema.py", ["torch", "kfp", "apache_beam", "mlflow", "numpy", "recpipe.data", "recpipe.models",
                           "recpipe.tasks", "recpipe.ingest", "recpipe.tracking"], []),
    ("recpipe/fileio.py", ["torch", "numpy", "pyarrow", "kfp", "apache_beam", "mlflow", "recpipe.data",
                           "recpipe.models", "recpipe.tasks", "recpipe.schema", "recpipe.config"], []),
    ("recpipe/config.py", ["torch", "kfp", "apache_beam", "mlflow", "pyarrow", "recpipe.data", "recpipe.models",
                           "recpipe.tasks", "recpipe.schema"], []),
    ("ops/", ["kfp", "apache_beam", "mlflow", "recpipe.data", "recpipe.models", "recpipe.modules",
              "recpipe.train", "recpipe.tasks", "recpipe.quant", "recpipe.search", "recpipe.metrics",
              "recpipe.tracking", "recpipe.ingest", "recpipe.schema", "recpipe.config"], []),
    ("recpipe/modules/", ["kfp", "apache_beam", "mlflow", "recpipe.train", "recpipe.tasks", "recpipe.search",
                          "recpipe.ingest", "recpipe.tracking", "recpipe.quant"], []),
    ("recpipe/models/", ["kfp", "apache_beam", "mlflow", "recpipe.train", "recpipe.tasks", "recpipe.search",
                         "recpipe.ingest", "recpipe.tracking", "recpipe.quant", "recpipe.metrics",
                         "recpipe.data.loader", "recpipe.data.synthetic"], []),
    *[(f"recpipe/{p}/", ["kfp", "apache_beam", "mlflow", "recpipe.tasks", "recpipe.ingest",
                         "recpipe.tracking.mlflow_tracker", "recpipe.tracking.registry", "recpipe.components",
                         "recpipe.pipelines"], [])
      for p in ("data", "train", "search", "quant", "metrics")],
    ("recpipe/ingest/", ["torch", "kfp", "mlflow", "recpipe.data", "recpipe.models", "recpipe.modules",
                         "recpipe.train", "recpipe.tasks", "recpipe.tracking"], []),
    ("recpipe/tracking/", ["kfp", "apache_beam"], []),
    ("recpipe/tasks/", ["kfp", "recpipe.components", "recpipe.pipelines"], []),
    ("recpipe/cli.py", [], ["kfp", "recpipe.components", "recpipe.pipelines"]),
    ("components/", ["apache_beam", "mlflow"], ["torch", "recpipe.tasks", "recpipe.data", "recpipe.train"]),
    ("pipelines/", ["torch", "apache_beam", "mlflow", "recpipe.tasks"], []),
]


def _imports(path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """(module, at_module_level, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.extend((f"{child.module}.{a.name}", top, child.lineno) for a in child.names)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            else:
                visit(child, top)

    visit(tree, True)
    return out


def _hit(module: str, banned: str) -> bool:
    return module == banned or module.startswith(banned + ".")


def _files(prefix: str) -> list[pathlib.Path]:
    p = ROOT / prefix
    if prefix.endswith(".py"):
        return [p] if p.exists() else []
    return sorted(p.rglob("*.py"))


@pytest.mark.parametrize("prefix,anywhere,top_level", RULES, ids=[r[0] for r in RULES])
def test_layering(prefix, anywhere, top_level):
    violations = []
    for f in _files(prefix):
        for mod, top, line in _imports(f):
            for banned in anywhere + (top_level if top else []):
                if _hit(mod, banned):
                    violations.append(f"{f.relative_to(ROOT)}:{line} imports {mod} (banned: {banned})")
    assert not violations, "\n".join(violations)


def test_rules_cover_every_package():
    covered = {r[0] for r in RULES}
    for pkg in (ROOT / "recpipe").iterdir():
        if pkg.is_dir() and (pkg / "__init__.py").exists():
            assert f"recpipe/{pkg.name}/" in covered, f"recpipe/{pkg.name} has no layering rule"


def test_detector_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\ndef f():\n    import torch.nn\nfrom kfp import dsl\n")
    found = _imports(bad)
    assert ("torch.nn", False, 3) in found and ("kfp.dsl", True, 4) in found


# What importing a module may pull in, transitively (checked in a fresh interpreter).
TRANSITIVE = [
    ("recpipe.schema", ["torch", "mlflow", "kfp", "apache_beam"]),
    ("recpipe.pipelines", ["torch", "mlflow", "apache_beam"]),
    ("recpipe.components", ["torch", "mlflow", "apache_beam"]),
    ("recpipe.ingest.pipeline", ["torch", "mlflow", "kfp"]),
    ("recpipe.models", ["mlflow", "kfp", "apache_beam"]),
    ("recpipe.train.loop", ["mlflow", "kfp", "apache_beam"]),
    ("recpipe.tasks.train", ["kfp", "apache_beam"]),
]


@pytest.mark.parametrize("module,banned", TRANSITIVE, ids=[t[0] for t in TRANSITIVE])
def test_transitive_imports(module, banned):
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {banned!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"importing {module} loads {out.stdout.strip()}"
