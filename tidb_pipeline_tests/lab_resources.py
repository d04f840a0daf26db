"""What the lab fixtures share: unique names, the lab's environment applied, the pipeline's resources pointed at
the lab parts, and the source database, topics, changefeed and warehouse database a test makes, removed after.

Each fixture keeps only what is its own (the tables it creates, the rows and records it puts in); how a lab
object is made unique, reached and cleaned up lives here once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pymysql
from confluent_kafka.admin import NewTopic

from tidb_pipeline.lab.env import applied, pipeline_env
from tidb_pipeline.lab.ports import free_port
from tidb_pipeline.lab.service import Service, down, up
from tidb_pipeline.lab.settings import LAB_DB_PASSWORD, LAB_DB_USER, LabSettings
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCClient, TiCDCResource
from tidb_pipeline.resources.tidb import TiDBResource


P = TypeVar("P", bound=Service)


def unique_suffix(length: int = 8) -> str:
    """A random hex tag that keeps one test's lab objects apart from every other's."""
    return uuid.uuid4().hex[:length]


@contextmanager
def lab_environment(settings: LabSettings, *, unset: tuple[str, ...] = ()) -> Iterator[LabSettings]:
    """The resources' environment variables pointed at this lab for the block (`tidb-pipeline lab env`)."""
    with applied(pipeline_env(settings), unset=unset):
        yield settings


def tidb_resource(settings: LabSettings) -> TiDBResource:
    """The pipeline's TiDB resource on the lab's MariaDB."""
    return TiDBResource(host=settings.host, port=settings.port("mariadb"), user=LAB_DB_USER, password=LAB_DB_PASSWORD)


def kafka_resource(settings: LabSettings) -> KafkaResource:
    """The pipeline's Kafka resource on the lab's broker."""
    return KafkaResource(bootstrap_servers=settings.kafka_bootstrap)


def registry_resource(settings: LabSettings) -> SchemaRegistryResource:
    """The pipeline's Schema Registry resource on the lab's registry."""
    return SchemaRegistryResource(url=settings.registry_url)


@contextmanager
def source_databases(mariadb: Service, *databases: str, statements: tuple[str, ...] = (),
                     create: bool = True) -> Iterator[pymysql.connections.Connection]:  # fmt: skip
    """An autocommit connection to the lab's MariaDB (TiDB) with `databases` created (unless `create` is false:
    the test creates them) and `statements` run; the databases are dropped and the connection closed after."""
    conn = pymysql.connect(autocommit=True, **mariadb.connect_kwargs())  # type: ignore[attr-defined]
    try:
        with conn.cursor() as cur:
            for db in databases if create else ():
                cur.execute(f"CREATE DATABASE `{db}`")
            for statement in statements:
                cur.execute(statement)
        yield conn
    finally:
        with conn.cursor() as cur:
            for db in databases:
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        conn.close()


@contextmanager
def changefeed_client(settings: LabSettings, *changefeed_ids: str) -> Iterator[TiCDCClient]:
    """A client of the lab's TiCDC; the `changefeed_ids` the test makes are deleted after (deleting is idempotent)."""
    client = TiCDCResource(url=settings.ticdc_url).get_client()
    try:
        yield client
    finally:
        try:
            for cf_id in changefeed_ids:
                client.delete(cf_id)
        finally:
            client.close()


@contextmanager
def kafka_topics(settings: LabSettings, *topics: str, partitions: int = 1, create: bool = True) -> Iterator[None]:
    """`topics` created on the lab's broker (unless `create` is false: the pipeline makes them), deleted after."""
    admin = kafka_resource(settings).admin()
    if create and topics:
        for future in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
            future.result(timeout=60)
    try:
        yield
    finally:
        if topics:
            with contextlib.suppress(Exception):  # a topic the test never got to make
                for future in admin.delete_topics(list(topics)).values():
                    future.result(timeout=60)


@contextmanager
def snowflake_connection(settings: LabSettings, *databases: str, create: bool = True) -> Iterator[Any]:
    """A connector connection to the lab's Snowflake with `databases` created (unless `create` is false: the
    pipeline makes them); their contents are dropped after."""
    import snowflake.connector

    from tidb_pipeline.lab.snowflake import connection_args

    conn = snowflake.connector.connect(**connection_args(settings))
    try:
        for db in databases if create else ():
            conn.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{db}"')
        yield conn
    finally:
        try:
            for db in databases:
                with contextlib.suppress(Exception):  # a database the pipeline never got to make
                    _drop_schemas(conn, db)
        finally:
            conn.close()


def _drop_schemas(conn: Any, database: str) -> None:
    # The lab's fakesnow has no DROP DATABASE: dropping every schema frees the data (an empty file remains).
    cur = conn.cursor()
    cur.execute(f'SHOW SCHEMAS IN DATABASE "{database}"')
    for schema in [row[1] for row in cur.fetchall() if str(row[1]).upper() != "INFORMATION_SCHEMA"]:
        cur.execute(f'DROP SCHEMA IF EXISTS "{database}"."{schema}" CASCADE')


def drop_pipeline_output(settings: LabSettings, config: Any) -> None:
    """What a one-table pipeline over `config` (a `PipelineConfig`) left in the lab: its changefeed, its first
    table's topic and its Snowflake schemas, each where it exists (a test's cleanup)."""
    import httpx
    import snowflake.connector
    from confluent_kafka.admin import AdminClient

    from tidb_pipeline.lab.snowflake import connection_args
    from tidb_pipeline.replication.ddl import quote_ident

    httpx.delete(f"{settings.ticdc_url}/api/v2/changefeeds/{config.source.changefeed_id}", timeout=30)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = config.topic(config.tables[0])
    if topic in admin.list_topics(timeout=10).topics:
        for future in admin.delete_topics([topic]).values():
            future.result(30)
    sf = config.snowflake
    with snowflake.connector.connect(**connection_args(settings)) as conn:
        cur = conn.cursor()
        cur.execute("SHOW DATABASES")
        if sf.database in {row[1] for row in cur.fetchall()}:
            # fakesnow cannot DROP DATABASE; dropping the schemas frees the data, an empty file remains.
            for schema in (sf.landing_schema, sf.replica_schema, sf.control_schema):
                cur.execute(f"DROP SCHEMA IF EXISTS {quote_ident(sf.database)}.{quote_ident(schema)} CASCADE")


@contextmanager
def private_part(part: type[P], root: Path) -> Iterator[P]:
    """A lab part of the test's own (not the session's): its data under `root`, on free ports; stopped after."""
    svc = part(LabSettings(root=root, ports={name: free_port() for name in part.port_names}))
    up([svc], log=lambda _msg: None)
    try:
        yield svc
    finally:
        down([svc], log=lambda _msg: None)
