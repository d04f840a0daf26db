"""What the lab end-to-end tests share: a pipeline over a unique TPC-C database, materialising, catching up."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pymysql

from tidb_pipeline.config import parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.lab.env import applied, pipeline_env
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.workload.schema import CDC_KEYS


def tpcc_tables(db: str) -> list[dict[str, Any]]:
    """The config's `tables` for every TPC-C table the change feed can replicate, keyed as TiCDC keys them."""
    return [{"db": db, "table": t, "key": list(k)} for t, k in CDC_KEYS.items()]


@contextmanager
def lab_pipeline(
    settings: LabSettings, mariadb: Service, *, prefix: str, config: Callable[[str, str], Mapping[str, Any]],
    more_databases: tuple[str, ...] = (), unset_env: tuple[str, ...] = (),
) -> Iterator[dict[str, Any]]:
    """Definitions for `config(suffix, tpcc_db)` with the lab's environment; drops the changefeed and databases after.

    Each use gets a unique suffix, so its TPC-C database (`<prefix>_tpcc_<suffix>`, plus `more_databases`
    formatted with `{suffix}`), changefeed and warehouse objects never meet another test's.
    """
    suffix = uuid.uuid4().hex[:6]
    tpcc_db = f"{prefix}_tpcc_{suffix}"
    extra = [d.format(suffix=suffix) for d in more_databases]
    cfg = parse_config(dict(config(suffix, tpcc_db)))
    conn_kwargs = mariadb.connect_kwargs()  # type: ignore[attr-defined]
    with applied(pipeline_env(settings), unset=unset_env):
        defs = build_defs(config=cfg)
        try:
            yield {"config": cfg, "defs": defs, "conn_kwargs": conn_kwargs, "tpcc_db": tpcc_db, "suffix": suffix,
                   "databases": extra}
        finally:
            with defs.resources["ticdc"].get_client() as client:
                client.delete(cfg.source.changefeed_id)
            with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
                for db in (tpcc_db, *extra):
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


def materialize(defs: dg.Definitions, keys: set[dg.AssetKey], **resources: Any) -> dg.ExecuteInProcessResult:
    """Materialise `keys` in process (external specs included so dependencies resolve); asserts success."""
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and set(a.keys) & keys]
    specs = [a for a in defs.assets if isinstance(a, dg.AssetSpec)]
    result = dg.materialize([*assets, *specs], selection=list(keys), resources={**(defs.resources or {}), **resources})
    assert result.success
    return result
