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

from tidb_pipeline.lab import snowflake_adapter
from tidb_pipeline.replication.avro_types import replica_columns
from tidb_pipeline.replication.ddl import (
    TableRef,
    create_landing_sql,
    create_replica_sql,
    create_unconverted_sql,
    create_watermark_sql,
    quote_ident,
)
from tidb_pipeline.replication.landing import (
    RecordEncoder,
    create_landed_offsets_sql,
    read_landed_offsets_sql,
    write_landed_offsets_statements,
)
from tidb_pipeline.replication.merge import MergePlan

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)
TOPIC = "tidb_test_t"  # the topic `Replica.land` writes into RECORD_METADATA
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
    """An in-process fakesnow connection (database DB, schema S) that lives for the `with` block.

    With the lab's adapter installed, as in the lab's server: the pipeline sends Snowflake's SQL only.
    """
    snowflake_adapter.install()
    with fakesnow.patch():
        conn = snowflake.connector.connect(database="DB", schema="S")
        try:
            yield conn
        finally:
            conn.close()


class Replica:
    """A replica under test: its plan, the encoder for its landing rows and the fakesnow connection."""

    def __init__(self, conn: Any, key_schema: dict, value_schema: dict, name: str = "T",
                 names: dict[str, str] | None = None, landed: bool = False) -> None:
        """`landed`: as the built-in loader lands, with the landed-offsets table `S.LANDING_OFFSETS` that
        `land` moves with each batch and the merge plan reads."""
        self.conn = conn
        self.key_schema = key_schema
        self.value_schema = value_schema
        self.plan = MergePlan(
            replica=TableRef("S", name),
            landing=TableRef("S", f"LANDING_{name}"),
            watermarks=TableRef("S", "MERGE_WATERMARKS"),
            columns=replica_columns(value_schema, key_schema, names),
            topic=TOPIC if landed else "",
            landed=TableRef("S", "LANDING_OFFSETS") if landed else None,
        )
        self.encoder = RecordEncoder(key_schema, value_schema)
        cur = conn.cursor()
        for sql in (
            create_landing_sql(self.plan.landing),
            create_watermark_sql(self.plan.watermarks),
            create_unconverted_sql(self.plan.unconverted),
            create_replica_sql(self.plan.replica, self.plan.columns),
            *([create_landed_offsets_sql(self.plan.landed)] if self.plan.landed else []),
        ):
            cur.execute(sql)

    def land(self, records: Sequence[tuple[int, int, dict, dict | None]], create_time_ms: int = CREATE_TIME_MS) -> None:
        """Insert (partition, offset, key, value|None) records as landing rows, in one statement."""
        if not records:
            return
        rows = [
            (self.encoder.metadata(TOPIC, p, o, create_time_ms, k), self.encoder.content(v))
            for p, o, k, v in records
        ]
        values = ", ".join("(%s, %s)" for _ in rows)
        self.conn.cursor().execute(
            f"INSERT INTO {self.plan.landing.sql} SELECT PARSE_JSON(column1), PARSE_JSON(column2) FROM VALUES {values}",
            tuple(x for row in rows for x in row),
        )
        if self.plan.landed is not None:
            last = self.landed_offsets()
            for p, o, _, _ in records:
                last[p] = max(last.get(p, -1), o)
            self.set_landed_offsets(last)

    def landed_offsets(self) -> dict[int, int]:
        assert self.plan.landed is not None
        stmt = read_landed_offsets_sql(self.plan.landed, self.plan.landing, TOPIC)
        return {int(p): int(o) for p, o in self.conn.cursor().execute(stmt.sql, stmt.params).fetchall()}

    def set_landed_offsets(self, last: dict[int, int]) -> None:
        assert self.plan.landed is not None
        for stmt in write_landed_offsets_statements(self.plan.landed, self.plan.landing, TOPIC, last, "test",
                                                    NOW.replace(tzinfo=None)):
            self.conn.cursor().execute(stmt.sql, stmt.params)

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


def decimal_type(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


# The small table `t` most tests replicate: key `id`; its value `id`, `name`, `price` and the test's own fields.
KEY = record("t", [field("id", "long", "BIGINT")])


def small_value(*more: dict[str, Any]) -> dict[str, Any]:
    """The value schema of table `t`: id, name, price DECIMAL(10,2), then `more`, with TiCDC's extension fields."""
    return with_extension(record("t", [field("id", "long", "BIGINT"), field("name", "string", "TEXT", nullable=True),
                                       field("price", decimal_type(10, 2), "DECIMAL"), *more]))


# One column per row of spec/ticdc-avro.md's type table (plus the string handling modes), key `id`.
ALL_TYPES_KEY = record("all_types", [field("id", "long", "BIGINT")])
ALL_TYPES_VALUE = with_extension(
    record(
        "all_types",
        [
            field("id", "long", "BIGINT"),
            field("c_int", "int", "INT", nullable=True),
            field("c_int_unsigned", "int", "INT UNSIGNED", nullable=True),
            field("c_int_unsigned_long", "long", "INT UNSIGNED", nullable=True),
            field("c_bigint", "long", "BIGINT", nullable=True),
            field("c_bigint_unsigned", "long", "BIGINT UNSIGNED", nullable=True),
            field("c_bigint_unsigned_str", "string", "BIGINT UNSIGNED", nullable=True),
            field("c_float", "float", "FLOAT", nullable=True),
            field("c_double", "double", "DOUBLE", nullable=True),
            field("c_decimal", decimal_type(10, 2), "DECIMAL", nullable=True),
            field("c_decimal_wide", decimal_type(65, 30), "DECIMAL", nullable=True),
            field("c_decimal_str", "string", "DECIMAL", nullable=True),
            field("c_text", "string", "TEXT", nullable=True),
            field("c_blob", "bytes", "BLOB", nullable=True),
            field("c_bit", "bytes", "BIT", nullable=True, **{"connect.parameters": {"tidb_type": "BIT", "length": "10"}}),
            field("c_enum", "string", "ENUM", nullable=True),
            field("c_set", "string", "SET", nullable=True),
            field("c_json", "string", "JSON", nullable=True),
            field("c_date", "string", "DATE", nullable=True),
            field("c_datetime", "string", "DATETIME", nullable=True),
            field("c_timestamp", "string", "TIMESTAMP", nullable=True),
            field("c_time", "string", "TIME", nullable=True),
            field("c_year", "int", "YEAR", nullable=True),
        ],
        db="types",
    )
)
ALL_TYPES_SQL = {
    "id": "NUMBER(19,0)",
    "c_int": "NUMBER(10,0)",
    "c_int_unsigned": "NUMBER(10,0)",
    "c_int_unsigned_long": "NUMBER(10,0)",
    "c_bigint": "NUMBER(19,0)",
    "c_bigint_unsigned": "NUMBER(20,0)",
    "c_bigint_unsigned_str": "NUMBER(20,0)",
    "c_float": "FLOAT",
    "c_double": "FLOAT",
    "c_decimal": "NUMBER(10,2)",
    "c_decimal_wide": "VARCHAR",
    "c_decimal_str": "VARCHAR",
    "c_text": "VARCHAR",
    "c_blob": "BINARY",
    "c_bit": "BINARY",
    "c_enum": "VARCHAR",
    "c_set": "VARCHAR",
    "c_json": "VARIANT",
    "c_date": "DATE",
    "c_datetime": "TIMESTAMP_NTZ(6)",
    "c_timestamp": "TIMESTAMP_NTZ(6)",
    "c_time": "VARCHAR",
    "c_year": "NUMBER(4,0)",
}


def landing_line(builder: Any, *record: Any) -> str:
    """One record's two landing columns as one JSON object text (what a landing row holds), for assertions."""
    metadata, content = builder.row(*record)
    return '{"RECORD_METADATA":' + metadata + ',"RECORD_CONTENT":' + content + "}\n"
