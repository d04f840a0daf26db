"""Every statement the lab's Snowflake server runs, one line each, so idle cost can be counted at the server.

On Snowflake each statement may resume a warehouse; here the server process (`lab/snowflake.py`) appends
`<epoch seconds>\t<statement, whitespace folded, cut at 300 characters>` to `statements.log` beside its data
folder for every statement a client sends (as sent, before the lab adapter rewrites it; statements fakesnow
runs on its own behalf while executing one are not counted). Production code is untouched: the count is
taken where Snowflake would bill it.

    python -m tidb_pipeline.lab.statement_log --since 1765090000    # count, per first keyword
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_NAME = "statements.log"
_depth = threading.local()
_write_lock = threading.Lock()


def log_path(settings: Any) -> Path:
    """Where the lab's Snowflake server writes its statement log."""
    from tidb_pipeline.lab.snowflake import SnowflakeService

    return SnowflakeService(settings).data_dir / LOG_NAME


def install(path: Path) -> None:
    """Log every outermost `execute` of the server's fakesnow cursors to `path` (call once, in the server)."""
    from fakesnow.cursor import FakeSnowflakeCursor

    if getattr(FakeSnowflakeCursor, "_tidb_pipeline_logged", False):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    execute = FakeSnowflakeCursor.execute

    def logged_execute(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_depth, "n", 0)
        if depth == 0:
            line = f"{time.time():.3f}\t{' '.join(str(command).split())[:300]}\n"
            with _write_lock, path.open("a", encoding="utf-8") as f:
                f.write(line)
        _depth.n = depth + 1
        try:
            return execute(self, command, *args, **kwargs)
        finally:
            _depth.n = depth

    FakeSnowflakeCursor.execute = logged_execute  # type: ignore[method-assign]
    FakeSnowflakeCursor._tidb_pipeline_logged = True  # type: ignore[attr-defined]  # noqa: SLF001


@dataclass(frozen=True)
class Statement:
    at: float
    sql: str

    @property
    def kind(self) -> str:
        return (self.sql.split(None, 1) or ["?"])[0].upper()


def read(path: Path, since: float = 0.0, until: float = float("inf")) -> list[Statement]:
    """The statements logged in [since, until)."""
    if not path.exists():
        return []
    out: list[Statement] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        at, _, sql = line.partition("\t")
        try:
            t = float(at)
        except ValueError:
            continue
        if since <= t < until:
            out.append(Statement(t, sql))
    return out


def by_kind(statements: list[Statement]) -> Counter[str]:
    return Counter(s.kind for s in statements)


def _main(argv: list[str] | None = None) -> None:
    from tidb_pipeline.lab.settings import LabSettings

    parser = argparse.ArgumentParser(description="Count the statements the lab's Snowflake server ran.")
    parser.add_argument("--since", type=float, default=0.0, help="epoch seconds")
    parser.add_argument("--until", type=float, default=float("inf"))
    args = parser.parse_args(argv)
    statements = read(log_path(LabSettings()), args.since, args.until)
    print(f"{len(statements)} statements")
    for kind, n in by_kind(statements).most_common():
        print(f"  {kind}: {n}")


if __name__ == "__main__":
    _main()
