"""What the lab end-to-end tests share: a pipeline over a unique TPC-C database, materialising, catching up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg

from tidb_pipeline.config import parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.workload.schema import CDC_KEYS
from tidb_pipeline_tests.lab_resources import changefeed_client, lab_environment, source_databases, unique_suffix


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
    suffix = unique_suffix(6)
    tpcc_db = f"{prefix}_tpcc_{suffix}"
    extra = [d.format(suffix=suffix) for d in more_databases]
    cfg = parse_config(dict(config(suffix, tpcc_db)))
    conn_kwargs = mariadb.connect_kwargs()  # type: ignore[attr-defined]
    with (lab_environment(settings, unset=unset_env), source_databases(mariadb, tpcc_db, *extra, create=False),
          changefeed_client(settings, cfg.source.changefeed_id)):
        defs = build_defs(config=cfg)
        yield {"config": cfg, "defs": defs, "conn_kwargs": conn_kwargs, "tpcc_db": tpcc_db, "suffix": suffix,
               "databases": extra}


def materialize(defs: dg.Definitions, keys: set[dg.AssetKey], **resources: Any) -> dg.ExecuteInProcessResult:
    """Materialise `keys` in process (external specs included so dependencies resolve); asserts success."""
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and set(a.keys) & keys]
    specs = [a for a in defs.assets if isinstance(a, dg.AssetSpec)]
    result = dg.materialize([*assets, *specs], selection=list(keys), resources={**(defs.resources or {}), **resources})
    assert result.success
    return result
