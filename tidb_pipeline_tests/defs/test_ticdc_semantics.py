"""TiCDC behaviours the replica depends on, end to end on the lab (MariaDB -> change feed -> Kafka -> landing ->
merge), each ending with the replica equal to the source in full:

- a virtual generated column is never replicated (not in the Avro schemas, the changefeed's records, the
  backfill or the replica; an index on it never keys the table); a stored generated column is;
- an UPDATE that changes a unique-key column other than the handle key arrives as DELETE + INSERT.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.engine.backfill import backfill
from tidb_pipeline.defs.tables import table_names
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings
from tidb_pipeline.lab.snapshot import MariaDBSnapshotSource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource, quote_mysql
from tidb_pipeline_tests.reliability.support import (
    Target,
    assert_replica_equals_source,
    delete_changefeed,
    kafka_of,
    land,
    merge,
    mysql_kwargs,
    table_feed,
    wait_for_checkpoint,
    warehouse,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# MariaDB spells a stored generated column STORED or PERSISTENT; `v` is virtual and carries a unique index.
GENERATED_DDL = (
    "CREATE TABLE {t} (id INT NOT NULL PRIMARY KEY, a INT NOT NULL, label VARCHAR(20) NULL, "
    "v INT AS (a * 2) VIRTUAL, s INT AS (a + 1) STORED, p VARCHAR(30) AS (CONCAT(label, '!')) PERSISTENT, "
    "UNIQUE KEY uq_v (v))"
)
REPLICATED = ["id", "a", "label", "s", "p"]


def _replica_columns(sf: Any, target: Target) -> list[str]:
    cur = sf.cursor()
    cur.execute(f'SELECT column_name FROM "{target.replica.database}".information_schema.columns '
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (target.replica.schema, target.replica.name))  # fmt: skip
    return [r[0] for r in cur.fetchall()]


def _value_fields(settings: LabSettings, topic: str) -> list[str]:
    schema = SchemaRegistryResource(url=settings.registry_url).get_client().get_latest_version(f"{topic}-value")
    return [f["name"] for f in json.loads(schema.schema.schema_str)["fields"] if not f["name"].startswith("_tidb_")]


def _generated_writes(conn: pymysql.Connection, t: str, first: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {t} (id, a, label) VALUES (%s, %s, %s)",
                        [(i, i, None if i % 3 == 0 else f"l{i}") for i in range(first, first + 30)])  # fmt: skip
        cur.execute(f"UPDATE {t} SET a = a + 100 WHERE id < %s", (first + 10,))  # moves v and s
        cur.execute(f"UPDATE {t} SET label = 'changed' WHERE id BETWEEN %s AND %s", (first + 10, first + 14))
        cur.execute(f"DELETE FROM {t} WHERE id > %s", (first + 25,))


def test_virtual_generated_column_is_left_out_by_the_changefeed(lab_settings: LabSettings, mariadb: Service,
                                                                 kafka: Service, registry: Service,
                                                                 ticdc: Service, snowflake: Service) -> None:
    with table_feed(lab_settings, "gen_cf", GENERATED_DDL, table="g") as feed, feed.connect() as conn:
        t = f"{quote_mysql(feed.db)}.{quote_mysql(feed.table)}"
        _generated_writes(conn, t, 1)
        feed.catch_up()
        target = Target.of(table_names(feed.config, feed.config.tables[0]))
        assert _value_fields(lab_settings, feed.topic) == REPLICATED
        # What the checks read from the source (schema drift, content) is the replicated columns too, and the
        # unique index on `v` is no handle key.
        tidb = TiDBResource(host=lab_settings.host, port=lab_settings.port("mariadb"), user=LAB_DB_USER,
                            password=LAB_DB_PASSWORD)  # fmt: skip
        assert [c.name for c in tidb.columns(feed.db, feed.table)] == REPLICATED
        assert tidb.handle_key(feed.db, feed.table) == ("id",)
        with warehouse(lab_settings) as sf:
            land(lab_settings, sf, target)
            merge(lab_settings, sf, target)
            assert _replica_columns(sf, target) == REPLICATED
            cmp = assert_replica_equals_source(lab_settings, sf, feed.db, feed.table, target.replica, ["id"])
            assert cmp.source_rows == 26


@contextlib.contextmanager
def _unfed_table(settings: LabSettings, prefix: str, ddl: str, table: str) -> Iterator[tuple[PipelineConfig, str]]:
    """A source table with no changefeed yet (the backfill creates it)."""
    suffix = uuid.uuid4().hex[:6]
    db = f"{prefix}_{suffix}"
    config = parse_config({"source": {"changefeed_id": f"{prefix.replace('_', '-')}-{suffix}"},
                           "snowflake": {"database": f"{prefix.upper()}_{suffix.upper()}"},
                           "tables": [{"db": db, "table": table, "key": ["id"]}]})  # fmt: skip
    with pymysql.connect(autocommit=True, **mysql_kwargs(settings)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {quote_mysql(db)}")
        cur.execute(ddl.format(t=f"{quote_mysql(db)}.{quote_mysql(table)}"))
    try:
        yield config, db
    finally:
        with contextlib.suppress(Exception):
            delete_changefeed(settings, config.source.changefeed_id)
        with pymysql.connect(autocommit=True, **mysql_kwargs(settings)) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_mysql(db)}")


def test_backfill_leaves_the_virtual_generated_column_out_too(lab_settings: LabSettings, mariadb: Service,
                                                               kafka: Service, registry: Service, ticdc: Service,
                                                               snowflake: Service) -> None:
    with _unfed_table(lab_settings, "gen_bf", GENERATED_DDL, "g") as (config, db), \
            pymysql.connect(autocommit=True, **mysql_kwargs(lab_settings)) as conn:
        t = f"{quote_mysql(db)}.`g`"
        _generated_writes(conn, t, 1)  # before the changefeed: only the backfill carries these
        target = Target.of(table_names(config, config.tables[0]))
        with warehouse(lab_settings) as sf, TiCDCResource(url=lab_settings.ticdc_url).get_client() as client:
            result = backfill(tidb=None, snowflake_connection=sf, ticdc_client=client, kafka=kafka_of(lab_settings),
                              registry=SchemaRegistryResource(url=lab_settings.registry_url), config=config,
                              tables=config.tables, snapshot=MariaDBSnapshotSource(mysql_kwargs(lab_settings)))  # fmt: skip
            assert result.rows == 26
            assert _replica_columns(sf, target) == REPLICATED
            assert_replica_equals_source(lab_settings, sf, db, "g", target.replica, ["id"])
            _generated_writes(conn, t, 1000)  # after it: only the changefeed carries these
            wait_for_checkpoint(lab_settings, config.source.changefeed_id)
            assert _value_fields(lab_settings, target.topic) == REPLICATED
            land(lab_settings, sf, target)
            merge(lab_settings, sf, target)
            assert _replica_columns(sf, target) == REPLICATED
            cmp = assert_replica_equals_source(lab_settings, sf, db, "g", target.replica, ["id"])
            assert cmp.source_rows == 52


UNIQUE_DDL = (
    "CREATE TABLE {t} (id INT NOT NULL PRIMARY KEY, email VARCHAR(40) NULL, code INT NOT NULL, n INT NOT NULL, "
    "UNIQUE KEY uq_email (email), UNIQUE KEY uq_code (code))"
)


def _landed_ops(sf: Any, target: Target) -> list[tuple[int, str]]:
    """(key id, op) of every landed record in Kafka order per partition; a tombstone's op is "d"."""
    cur = sf.cursor()
    cur.execute(f'SELECT "RECORD_METADATA":"key":"id"::int, "RECORD_CONTENT":"_tidb_op"::varchar '
                f'FROM {target.landing.sql} ORDER BY "RECORD_METADATA":"partition"::int, '
                '"RECORD_METADATA":"offset"::int')  # fmt: skip
    return [(int(k), op or "d") for k, op in cur.fetchall()]


def test_unique_key_change_arrives_as_delete_and_insert(lab_settings: LabSettings, mariadb: Service,
                                                         kafka: Service, registry: Service, ticdc: Service,
                                                         snowflake: Service) -> None:
    with table_feed(lab_settings, "uniq", UNIQUE_DDL, table="u") as feed, feed.connect() as conn:
        t = f"{quote_mysql(feed.db)}.{quote_mysql(feed.table)}"
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {t} VALUES (%s, %s, %s, 0)",
                            [(i, None if i == 4 else f"u{i}@x", 100 + i) for i in range(1, 7)])  # fmt: skip
            cur.execute(f"UPDATE {t} SET email = 'new1@x' WHERE id = 1")  # nullable unique index: split
            cur.execute(f"UPDATE {t} SET email = 'was-null@x' WHERE id = 4")  # NULL -> value: split
            cur.execute(f"UPDATE {t} SET code = 999 WHERE id = 2")  # NOT NULL unique index: split
            cur.execute(f"UPDATE {t} SET n = 7 WHERE id = 3")  # no unique column: an update
            # One transaction swaps two emails through a placeholder and touches n: TiCDC sees each row once.
            conn.begin()
            cur.execute(f"UPDATE {t} SET email = 'tmp' WHERE id = 5")
            cur.execute(f"UPDATE {t} SET email = 'u5@x' WHERE id = 6")
            cur.execute(f"UPDATE {t} SET email = 'u6@x', n = 9 WHERE id = 5")
            conn.commit()
            cur.execute(f"DELETE FROM {t} WHERE id = 2")
        feed.catch_up()
        target = Target.of(table_names(feed.config, feed.config.tables[0]))
        with warehouse(lab_settings) as sf:
            land(lab_settings, sf, target)
            merge(lab_settings, sf, target)
            ops: dict[int, list[str]] = {}
            for key, op in _landed_ops(sf, target):
                ops.setdefault(key, []).append(op)
            assert ops == {1: ["c", "d", "c"], 2: ["c", "d", "c", "d"], 3: ["c", "u"], 4: ["c", "d", "c"],
                           5: ["c", "d", "c"], 6: ["c", "d", "c"]}, ops  # fmt: skip
            cmp = assert_replica_equals_source(lab_settings, sf, feed.db, feed.table, target.replica, ["id"])
            assert cmp.source_rows == 5
