"""Import arrows point one way: defs -> engine -> replication -> resources; lab, bench, workload on top.

Read from the source (AST), every `import` anywhere in a module (a function-local import counts too), so a
layer cannot reach up by importing late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tidb_pipeline

PACKAGE = Path(tidb_pipeline.__file__).parent
PRODUCTION = ("defs", "engine", "replication", "resources", "config", "config_names", "definitions", "components",
              "run_launcher")
TOOLS = frozenset({"lab", "bench", "workload"})
# What each layer must not import besides the tools (a layer may import those below it).
FORBIDDEN: dict[str, frozenset[str]] = {
    "defs": frozenset(),
    "engine": frozenset({"defs"}),
    "replication": frozenset({"defs", "engine"}),
    "resources": frozenset({"defs", "engine", "replication"}),
    "config": frozenset({"defs", "engine", "replication", "resources"}),
    "config_names": frozenset({"defs", "engine", "replication", "resources"}),
    "definitions": frozenset(),
    "components": frozenset(),
    # Loaded by the daemon from dagster.yaml, before and apart from the definitions: Dagster and stdlib only.
    "run_launcher": frozenset({"defs", "engine", "replication", "resources", "config", "config_names",
                               "definitions", "components", "discover", "cli", "location"}),
}


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from tidb_pipeline import lab` names the layer in the imported names.
            if node.module == "tidb_pipeline":
                found += [(node.lineno, f"tidb_pipeline.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def violations(package: Path) -> list[str]:
    """`path:line: layer imports target` for every import that points the wrong way."""
    out: list[str] = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        layer = rel.parts[0].removesuffix(".py")
        if layer not in PRODUCTION:
            continue
        for line, module in _imported(ast.parse(path.read_text(), str(path))):
            if module.startswith("."):
                out.append(f"{rel}:{line}: relative import {module!r}; import tidb_pipeline.<layer> by name")
                continue
            parts = module.split(".")
            if parts[0] != "tidb_pipeline" or len(parts) < 2:
                continue
            target = parts[1]
            if target in TOOLS or target in FORBIDDEN[layer]:
                out.append(f"{rel}:{line}: {layer} imports {target} ({module})")
    return out


def test_production_imports_point_down() -> None:
    assert violations(PACKAGE) == []


def test_the_check_catches_upward_imports(tmp_path: Path) -> None:
    files = {
        "defs/ok.py": "from tidb_pipeline.engine import landing\nimport tidb_pipeline.replication.merge\n",
        "defs/late.py": "def f():\n    from tidb_pipeline.lab import stack\n",
        "engine/up.py": "from tidb_pipeline.defs.tables import table_names\n",
        "replication/up.py": "import tidb_pipeline.engine.replica\n",
        "resources/up.py": "from tidb_pipeline.replication.ddl import TableRef\n",
        "resources/rel.py": "from ..lab import stack\n",
        "config.py": "from tidb_pipeline import bench\n",
        "lab/free.py": "from tidb_pipeline.defs import build_defs\n",  # tools may import anything
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "config.py:1: config imports bench (tidb_pipeline.bench)",
        "defs/late.py:2: defs imports lab (tidb_pipeline.lab)",
        "engine/up.py:1: engine imports defs (tidb_pipeline.defs.tables)",
        "replication/up.py:1: replication imports engine (tidb_pipeline.engine.replica)",
        "resources/rel.py:1: relative import '..lab'; import tidb_pipeline.<layer> by name",
        "resources/up.py:1: resources imports replication (tidb_pipeline.replication.ddl)",
    ]
