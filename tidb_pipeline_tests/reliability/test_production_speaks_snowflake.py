"""Production code speaks Snowflake, never the lab's stand-in: no module under `replication/`, `defs/`,
`resources/` (or `engine/`, if it exists), nor `config.py` / `definitions.py`, names fakesnow or DuckDB or
quotes their error texts, and none branches on an error's message text (a missing object is Snowflake's
error number, `resources.warehouse.is_missing_object`). What the stand-in needs lives in
`tidb_pipeline/lab/snowflake_adapter.py`, the one place allowed to know it.

The scan reads the source text and walks the AST; `test_the_scan_catches_*` prove it finds what it forbids.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tidb_pipeline

ROOT = Path(tidb_pipeline.__file__).parent
PRODUCTION = ("replication", "defs", "resources", "engine", "config.py", "config_names.py", "definitions.py")
# Names and error texts of the lab's engine (case-insensitive).
FORBIDDEN_TEXT = re.compile(
    r"fakesnow|duckdb|catalog error|\"temp\" catalog|single attached database|TransactionContext|"
    r"Binder Error|Parser Error|Conflict on update",
    re.IGNORECASE,
)
# Text an error-message branch would look for.
_STRING_TESTS = {"startswith", "endswith", "find", "index", "count", "search", "match", "fullmatch", "findall"}
_EXCEPTION_TYPES = {"Exception", "BaseException", "Error", "ProgrammingError", "DatabaseError"}


def production_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for name in PRODUCTION:
        path = root / name
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.is_file():
            files.append(path)
    return files


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _exception_params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    out = set()
    for arg in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]:
        if arg.annotation is not None and _names(arg.annotation) & _EXCEPTION_TYPES:
            out.add(arg.arg)
    return out


def _text_tests(node: ast.AST, suspects: set[str]) -> list[ast.AST]:
    """`... in <suspect>`, `<suspect> == ...`, or a string/regex test whose subject involves a suspect."""
    found: list[ast.AST] = []
    for n in ast.walk(node):
        if isinstance(n, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in n.ops):
            if any(_names(c) & suspects for c in n.comparators):
                found.append(n)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _STRING_TESTS:
            if _names(n.func.value) & suspects or any(_names(a) & suspects for a in n.args):
                found.append(n)
    return found


def error_text_branches(tree: ast.AST) -> list[int]:
    """Lines that test an exception's text: in an `except ... as e:` body, or on a parameter typed as one."""
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.name:
            for stmt in node.body:
                lines += [n.lineno for n in _text_tests(stmt, {node.name})]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (params := _exception_params(node)):
            lines += [n.lineno for n in _text_tests(node, params)]
    return sorted(set(lines))


# Text tests that are not about the warehouse engine, each with why it is sound (file, code on the line).
REVIEWED: dict[tuple[str, str], str] = {
    ("defs/retries.py", "marker in str(exc) for marker in _TRANSIENT_TEXT"):
        "a landing reader subprocess reports its failure as text; the markers are librdkafka's own error names",
}


def offences(root: Path = ROOT) -> list[str]:
    found = []
    for path in production_files(root):
        rel = path.relative_to(root).as_posix()
        text = path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if m := FORBIDDEN_TEXT.search(line):
                found.append(f"tidb_pipeline/{rel}:{i}: names the lab's engine ({m.group(0)!r})")
        lines = text.splitlines()
        for line_no in error_text_branches(ast.parse(text, str(path))):
            if any(f == rel and code in lines[line_no - 1] for f, code in REVIEWED):
                continue
            found.append(f"tidb_pipeline/{rel}:{line_no}: branches on an error's message text")
    return found


def test_production_modules_hold_no_lab_engine_text_or_error_text_branches() -> None:
    assert production_files(), "the scan found no production modules"
    found = offences()
    assert not found, ("production code must speak Snowflake only; move lab adaptations to "
                       "tidb_pipeline/lab/snowflake_adapter.py:\n" + "\n".join(found))


def test_the_scan_catches_engine_names_and_error_text_branches(tmp_path: Path) -> None:
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "bad.py").write_text(
        "def _missing_object(exc: BaseException) -> bool:\n"
        "    return 'does not exist' in str(exc)\n"
        "\n"
        "def load(wh):\n"
        "    try:\n"
        "        wh.execute('SELECT 1')\n"
        "    except Exception as exc:\n"
        "        if \"does not exist\" not in str(exc).lower():\n"
        "            raise\n"
        "    try:\n"
        "        wh.execute('SELECT 2')\n"
        "    except Exception as e:  # DuckDB keeps temporary tables apart\n"
        "        if str(e).startswith('Catalog'):\n"
        "            pass\n"
    )
    (tmp_path / "replication").mkdir()
    (tmp_path / "replication" / "ok.py").write_text(
        "def f(exc):\n    return getattr(exc, 'errno', None) == 2003  # Snowflake's missing-object error\n"
    )
    assert offences(tmp_path) == [
        "tidb_pipeline/defs/bad.py:12: names the lab's engine ('DuckDB')",
        "tidb_pipeline/defs/bad.py:2: branches on an error's message text",
        "tidb_pipeline/defs/bad.py:8: branches on an error's message text",
        "tidb_pipeline/defs/bad.py:13: branches on an error's message text",
    ]
