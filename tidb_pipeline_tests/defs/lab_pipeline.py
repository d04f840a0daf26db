"""What the lab end-to-end tests share: a pipeline over a unique TPC-C database, materialising, catching up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pymysql
import snowflake.connector

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs import build_defs
from tidb_pipeline.defs.tables import changefeed_key, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.workload import tpcc, types_table
from tidb_pipeline.workload.schema import CDC_KEYS
from tidb_pipeline_tests.lab_resources import changefeed_client, lab_environment, source_databases, unique_suffix

# The shared TPC-C database's size: big enough for several files and chunks per table, small enough for fakesnow.
SCALE = 0.01


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


@contextmanager
def pipeline_defs(
    settings: LabSettings, config: Mapping[str, Any], *, unset_env: tuple[str, ...] = (),
) -> Iterator[tuple[PipelineConfig, dg.Definitions]]:
    """The parsed `config` and its definitions, with the lab's environment applied for the block; cleans up nothing."""
    cfg = parse_config(dict(config))
    with lab_environment(settings, unset=unset_env):
        yield cfg, build_defs(config=cfg)


def e2e_configs(suffix: str, tpcc_db: str, types_db: str) -> dict[str, dict[str, Any]]:
    """The end-to-end tests' two pipelines over one source: `builtin` landing (precise decimals, the default
    topics, which the SQL Server applier reads too) and `connector` landing (string decimals, so its own
    changefeed and `cm_` topics), both over every TPC-C table plus the type-coverage table."""
    tables = [*tpcc_tables(tpcc_db), {"db": types_db, "table": types_table.TABLE, "key": ["id"]}]
    return {
        "builtin": {
            "source": {"changefeed_id": f"e2e-{suffix}"},
            "snowflake": {"database": f"E2E_{suffix.upper()}"},
            "tables": tables,
        },
        "connector": {
            "source": {"changefeed_id": f"cm-{suffix}", "topic_pattern": "cm_{schema}_{table}"},
            "snowflake": {"database": f"CM_{suffix.upper()}"},
            "landing_mode": "connector",
            # The 3.x line as Confluent Cloud runs it: SNOWPIPE files, in any order.
            "connectors": {"snowflake_sink_name": f"snowflake-sink-{suffix}", "snowflake_ingestion_method": "SNOWPIPE"},
            "tables": tables,
        },
    }


@contextmanager
def shared_tpcc_source(settings: LabSettings, mariadb: Service) -> Iterator[dict[str, Any]]:
    """One TPC-C database and type-coverage table for the end-to-end tests, fed to Kafka by their changefeeds.

    The changefeeds (`e2e_configs`, each created by materialising its pipeline's changefeed asset) start before
    the data is loaded, so every topic holds the whole history; each test then runs its own workload rounds
    and compares its replicas with the source as it stands. Drops the changefeeds and databases after.
    """
    suffix = unique_suffix(6)
    tpcc_db, types_db = f"e2e_tpcc_{suffix}", f"e2e_types_{suffix}"
    configs = e2e_configs(suffix, tpcc_db, types_db)
    conn_kwargs = mariadb.connect_kwargs()  # type: ignore[attr-defined]
    created: list[tuple[PipelineConfig, dg.Definitions]] = []
    try:
        for name in configs:
            with pipeline_defs(settings, configs[name]) as (cfg, defs):
                created.append((cfg, defs))
                materialize(defs, {changefeed_key(cfg)})
        tpcc.prepare(conn_kwargs, database=tpcc_db, warehouses=1, scale=SCALE)
        with pymysql.connect(autocommit=True, **conn_kwargs) as conn:
            types_table.create_types_table(conn, types_db)
            types_table.insert_types_rows(conn, database=types_db)
        yield {"suffix": suffix, "tpcc_db": tpcc_db, "types_db": types_db, "conn_kwargs": conn_kwargs,
               "configs": configs}
    finally:
        with lab_environment(settings):
            for cfg, defs in created:
                with defs.resources["ticdc"].get_client() as client:
                    client.delete(cfg.source.changefeed_id)
        with pymysql.connect(autocommit=True, **conn_kwargs) as conn, conn.cursor() as cur:
            for db in (tpcc_db, types_db):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


def run_workload(source: Mapping[str, Any], *, transactions: int, seed: int) -> tpcc.RunSummary:
    """A round of the TPC-C mix on the shared database that stops after `transactions` (however long that takes
    on a busy machine), then the type-coverage updates (a no-op after the first round that made them)."""
    summary = tpcc.run(source["conn_kwargs"], database=source["tpcc_db"], transactions=transactions,
                       duration_s=math.inf, threads=2, seed=seed)
    assert summary.completed + summary.errors == transactions, summary
    assert summary.completed > 0, summary
    with pymysql.connect(autocommit=True, **source["conn_kwargs"]) as conn:
        types_table.update_types_rows(conn, database=source["types_db"])
    return summary


def assert_replicas_equal_sources(config: PipelineConfig, conn_kwargs: Mapping[str, Any], settings: LabSettings) -> None:
    """Every configured table's Snowflake replica equals its (non-empty) TiDB source row for row."""
    mismatches = []
    with pymysql.connect(**conn_kwargs) as src, snowflake.connector.connect(**connection_args(settings)) as sf:
        for t in config.tables:
            cmp = compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key)
            assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
            if not cmp.equal:
                mismatches.append(f"{cmp.source}: {cmp}")
    assert not mismatches, "\n".join(mismatches)
