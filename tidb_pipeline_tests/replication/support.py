"""Shared helpers for the replication tests: TiCDC-shaped schemas, an in-process fakesnow, landing inserts."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import fakesnow
import fastavro
import snowflake.connector

from tidb_pipeline.replication.avro_types import replica_columns
from tidb_pipeline.replication.ddl import (
    TableRef,
    create_landing_sql,
    create_replica_sql,
    create_watermark_sql,
    quote_ident,
)
from tidb_pipeline.replication.landing import RecordEncoder
from tidb_pipeline.replication.merge import MergePlan

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)
CREATE_TIME_MS = int(NOW.timestamp() * 1000)


def field(name: str, avro: str | dict[str, Any], tidb_type: str, nullable: bool = False, **extra: Any) -> dict:
    """One TiCDC-shaped field: type carries connect.parameters.tidb_type; nullable -> ["null", T]."""
    base = {"type": avro} if isinstance(avro, str) else dict(avro)
    base["connect.parameters"] = {"tidb_type": tidb_type}
    base.update(extra)
    return {"name": name, "type": ["null", base], "default": None} if nullable else {"name": name, "type": base}


def record(table: str, fields: Sequence[dict], db: str = "test") -> dict:
    return {"type": "record", "name": table, "namespace": f"default.{db}", "fields": list(fields)}


def with_extension(schema: dict) -> dict:
    return {
        **schema,
        "fields": [
            *schema["fields"],
            {"default": "", "name": "_tidb_op", "type": "string"},
            {"default": 0, "name": "_tidb_commit_ts", "type": "long"},
            {"default": 0, "name": "_tidb_commit_physical_time", "type": "long"},
        ],
    }


def avro_round_trip(schema: dict, value: dict) -> dict:
    """Encode and decode through fastavro, as a Kafka consumer would see the value."""
    parsed = fastavro.parse_schema(schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, value)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, parsed, None)


@contextmanager
def fake_snowflake() -> Iterator[Any]:
    """An in-process fakesnow connection (database DB, schema S) that lives for the `with` block."""
    with fakesnow.patch():
        conn = snowflake.connector.connect(database="DB", schema="S")
        try:
            yield conn
        finally:
            conn.close()


class Replica:
    """A replica under test: its plan, the encoder for its landing rows and the fakesnow connection."""

    def __init__(self, conn: Any, key_schema: dict, value_schema: dict, name: str = "T") -> None:
        self.conn = conn
        self.key_schema = key_schema
        self.value_schema = value_schema
        self.plan = MergePlan(
            replica=TableRef("S", name),
            landing=TableRef("S", f"LANDING_{name}"),
            watermarks=TableRef("S", "MERGE_WATERMARKS"),
            columns=replica_columns(value_schema, key_schema),
        )
        self.encoder = RecordEncoder(key_schema, value_schema)
        cur = conn.cursor()
        for sql in (
            create_landing_sql(self.plan.landing),
            create_watermark_sql(self.plan.watermarks),
            create_replica_sql(self.plan.replica, self.plan.columns),
        ):
            cur.execute(sql)

    def land(self, records: Sequence[tuple[int, int, dict, dict | None]], create_time_ms: int = CREATE_TIME_MS) -> None:
        """Insert (partition, offset, key, value|None) records as landing rows, in one statement."""
        if not records:
            return
        rows = [
            (self.encoder.metadata("tidb_test_t", p, o, create_time_ms, k), self.encoder.content(v))
            for p, o, k, v in records
        ]
        values = ", ".join("(%s, %s)" for _ in rows)
        self.conn.cursor().execute(
            f"INSERT INTO {self.plan.landing.sql} SELECT PARSE_JSON(column1), PARSE_JSON(column2) FROM VALUES {values}",
            tuple(x for row in rows for x in row),
        )

    def rows(self) -> list[tuple]:
        keys = ", ".join(quote_ident(k.name) for k in self.plan.keys)
        cur = self.conn.cursor()
        cur.execute(f"SELECT * FROM {self.plan.replica.sql} ORDER BY {keys}")
        return [tuple(r) for r in cur.fetchall()]

    def landing_offsets(self) -> list[tuple[int, int]]:
        cur = self.conn.cursor()
        cur.execute(
            'SELECT "RECORD_METADATA":"partition"::int, "RECORD_METADATA":"offset"::int '
            f"FROM {self.plan.landing.sql} ORDER BY 1, 2"
        )
        return [tuple(r) for r in cur.fetchall()]

    def watermarks(self) -> list[tuple[int, int]]:
        cur = self.conn.cursor()
        cur.execute(
            f'SELECT "PARTITION", "MERGED_OFFSET" FROM {self.plan.watermarks.sql} '
            'WHERE "REPLICA_TABLE" = %s ORDER BY 1',
            (self.plan.replica.label,),
        )
        return [(int(p), int(o)) for p, o in cur.fetchall()]
