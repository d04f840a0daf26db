"""Which tables the changefeed, TiDB and `tidb_pipeline.yaml` disagree about, and the command that fixes it.

Pure. Four sets from three sources: TiDB's base tables, the running changefeed's filter rules (TiDB's
table-filter syntax, `table_filter`), and the config's table list:
- `unconfigured`: TiCDC replicates them (the filter matches) but the config lists them not: their topics fill
  with nobody landing them;
- `gone`: listed in the config but no longer in TiDB (dropped, or renamed: a rename shows as a gone table plus a
  new one); their replicas stop changing and their checks fail;
- `unfiltered`: listed and in TiDB, but the running filter does not match them: TiCDC sends nothing (materialise
  the changefeed asset to update its filter);
- `new`: TiDB tables in a database the config replicates from, neither listed nor replicated, and replicable
  (a handle key): a table created since `discover` ran.
`tidb-pipeline discover -d <db> ...` over the config's databases writes the list again from TiDB, keeping every
listed table's settings and dropping the gone ones.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tidb_pipeline.replication.table_filter import TableFilter

Table = tuple[str, str]  # (db, table)


def _names(tables: Iterable[Table]) -> tuple[str, ...]:
    return tuple(f"{db}.{t}" for db, t in sorted(tables))


@dataclass(frozen=True)
class Coverage:
    unconfigured: tuple[str, ...]
    gone: tuple[str, ...]
    unfiltered: tuple[str, ...]
    new: tuple[str, ...]
    command: str

    @property
    def clean(self) -> bool:
        return not (self.unconfigured or self.gone or self.unfiltered or self.new)


def discover_command(databases: Iterable[str], output: str | None = None) -> str:
    """`tidb-pipeline discover -d a -d b [-o path]`, each argument shell-quoted."""
    args = ["tidb-pipeline", "discover"]
    for db in sorted(set(databases)):
        args += ["-d", db]
    if output:
        args += ["-o", output]
    return " ".join(shlex.quote(a) for a in args)


def coverage(
    *, configured: Iterable[Table], tidb: Iterable[Table], rules: Sequence[str], case_sensitive: bool = False,
    replicable: Callable[[str, str], bool] = lambda db, t: True, output: str | None = None,
) -> Coverage:
    """Compare the three sources; `replicable` is asked only about candidate new tables (it may query TiDB)."""
    listed, present = set(configured), set(tidb)
    flt = TableFilter(rules, case_sensitive=case_sensitive)
    matched = {t for t in present if flt.matches(*t)}
    unconfigured = matched - listed
    gone = listed - present
    unfiltered = {t for t in listed & present if not flt.matches(*t)}
    config_dbs = {db for db, _ in listed}
    new = {t for t in present - listed - matched if t[0] in config_dbs and replicable(*t)}
    present_dbs = {db for db, _ in present}
    databases = {db for db in config_dbs if db in present_dbs} | {db for db, _ in unconfigured | new}
    return Coverage(_names(unconfigured), _names(gone), _names(unfiltered), _names(new),
                    discover_command(databases, output))
