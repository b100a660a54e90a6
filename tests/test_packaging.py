"""Every third-party module the library imports is a core dependency, so `pip install .` runs every step."""
from __future__ import annotations

import ast
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ["recpipe", "ops", "components", "pipelines"]
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "apache_beam": "apache-beam", "sklearn": "scikit-learn", "kfp.kubernetes": "kfp-kubernetes"}
OWN = {"recpipe", "tests"}


def _third_party_imports() -> dict[str, str]:
    found: dict[str, str] = {}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for folder in LIBRARY:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for name in names:
                    top = name.split(".")[0]
                    if top in stdlib or top in OWN:
                        continue
                    key = name if name in DIST else top
                    found.setdefault(DIST.get(key, key), str(path.relative_to(ROOT)))
    return found


def test_library_imports_are_core_dependencies():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = {re.split(r"[<>=!\[; ]", d, maxsplit=1)[0].lower() for d in meta["project"]["dependencies"]}
    missing = {dist: where for dist, where in _third_party_imports().items() if dist.lower() not in core}
    assert not missing, f"imported by the library but not in [project].dependencies: {missing}"


def test_scanner_sees_the_heavy_dependencies():
    found = _third_party_imports()
    assert {"torch", "pyarrow", "mlflow", "kfp", "kfp-kubernetes", "apache-beam", "pyyaml"} <= set(found)
