"""The pipeline on the lab in `connector` landing mode: the Snowflake Sink fills the landing tables, Dagster merges.

Acceptance of issues 6 and 13: TPC-C and the type-coverage table through the TiCDC stand-in and Kafka;
`confluent/<snowflake sink>` reconciles the sink's config (against the Confluent Cloud stand-in: no managed
connector runs here); the sink stand-in (`lab.connector_landing`) runs *that* config and writes what the
connector writes. First as 3.x with SNOWPIPE: a crashed delivery (duplicates), then files ingested out of
order, some twice, and some left on the stage while later files of their partition land (holes). The merge
holds each partition before its hole and says so; once the late files land, every replica equals its source
row for row. Then as 4.x after an upgrade (Snowpipe Streaming, NULL tombstones, SnowflakeConnectorPushTime):
every replica equals its source again. Connector mode sends string decimals, so DECIMAL(65,30) is exact.
The source is the `defs` package's shared `e2e_source` (its own changefeed and topics); each workload round
stops on a transaction count.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import snowflake.connector as sf_connector
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.connector_assets import confluent_key
from tidb_pipeline.defs.tables import table_keys, table_names
from tidb_pipeline.lab.confluent_cloud import ConfluentCloudConnect
from tidb_pipeline.lab.connector_landing import (
    SimulatedCrash,
    SinkSpec,
    deliver,
    ingest_withheld,
    landing_duplicates,
)
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.kafka_connect import KafkaConnectResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline_tests.defs.lab_pipeline import (
    assert_replicas_equal_sources,
    materialize,
    pipeline_defs,
    run_workload,
)
from tidb_pipeline_tests.changefeed import wait_for_checkpoint

pytestmark = pytest.mark.integration

# A syntactically plausible key body: the stand-in stores it, nothing here authenticates with it.
KAFKA_SECRET = "kafka/secret+@:%?"
# Transactions per workload round: deliveries (4 % of the mix) delete new orders, the 4.x tombstones.
TRANSACTIONS = 200
# Records per SNOWPIPE file: each file costs about ten statements on fakesnow, and this still gives the larger
# tables (item, stock, order_line) two or more files per partition to shuffle, duplicate and withhold.
FILE_RECORDS = 300
CRASH_RECORDS = 5  # records per partition the crashed delivery writes and never commits
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"


class _CloudConnect(KafkaConnectResource):
    """The resource Dagster builds cannot carry a transport; this one reaches the in-process stand-in."""

    def get_client(self, **_kwargs: Any) -> Any:
        return super().get_client(transport=_CLOUD[self.url].transport(), sleep=lambda _s: None)


_CLOUD: dict[str, ConfluentCloudConnect] = {}


@pytest.fixture(scope="module")
def pipeline(lab_settings: LabSettings, e2e_source: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The connector-mode pipeline over the shared source (its changefeed, with string decimals, exists already)."""
    with pipeline_defs(lab_settings, e2e_source["configs"]["connector"]) as (cfg, defs):
        # The connector expects its database and schema to exist (an operator creates them, not the sink).
        with sf_connector.connect(**connection_args(lab_settings)) as sf:
            cur = sf.cursor()
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(cfg.snowflake.database)}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(cfg.snowflake.database)}."
                        f"{quote_ident(cfg.snowflake.landing_schema)}")
        yield {**e2e_source, "config": cfg, "defs": defs}


def _reconcile_sink(defs: dg.Definitions, config: PipelineConfig, cloud: ConfluentCloudConnect) -> dict[str, Any]:
    """Materialise the sink asset against the Confluent Cloud stand-in; returns its metadata."""
    _CLOUD[cloud.url] = cloud
    result = materialize(
        defs, {confluent_key(config.connectors.snowflake_sink_name)},
        kafka_connect=_CloudConnect(flavor="confluent_cloud", url=cloud.url, api_key=cloud.api_key,
                                    api_secret=cloud.api_secret),
        # The managed sink needs a Kafka API key and a Snowflake key pair; the lab's Kafka ignores SASL
        # settings under PLAINTEXT, and this Snowflake resource serves the sink asset only.
        kafka=KafkaResource(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], sasl_username="KAFKAKEY",
                            sasl_password=KAFKA_SECRET),
        snowflake=SnowflakeResource(account="lab-account", user="PIPELINE", private_key=FAKE_KEY),
    )
    (mat,) = [e.materialization for e in result.get_asset_materialization_events()]
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert not any(KAFKA_SECRET in str(v) or "MIIE" in str(v) for v in meta.values()), meta
    return meta


def _clients(settings: LabSettings) -> tuple[KafkaResource, Any]:
    return (KafkaResource(bootstrap_servers=settings.kafka_bootstrap),
            SchemaRegistryResource(url=settings.registry_url).get_client())


def _landing_counts(config: PipelineConfig, settings: LabSettings) -> dict[str, tuple[int, int]]:
    with sf_connector.connect(**connection_args(settings)) as sf:
        return {t.table: landing_duplicates(sf, table_names(config, t).landing) for t in config.tables}


def _merge(defs: dg.Definitions, config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Materialise every replica; the merge metadata per table."""
    result = materialize(defs, {table_keys(config, t).replica for t in config.tables})
    by_key = {e.materialization.asset_key: {k: v.value for k, v in e.materialization.metadata.items()}
              for e in result.get_asset_materialization_events()}
    return {t.table: by_key[table_keys(config, t).replica] for t in config.tables}


def _watermarks(config: PipelineConfig, settings: LabSettings) -> dict[str, dict[int, int]]:
    with sf_connector.connect(**connection_args(settings)) as sf:
        cur = sf.cursor()
        out = {}
        for t in config.tables:
            names = table_names(config, t)
            cur.execute(f'SELECT "PARTITION", "MERGED_OFFSET" FROM {names.watermarks.sql} WHERE "REPLICA_TABLE" = %s',
                        (names.replica.label,))
            out[t.table] = {int(p): int(o) for p, o in cur.fetchall()}
        return out


def test_connector_mode_replicas_equal_source(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    config, defs = pipeline["config"], pipeline["defs"]
    assert config.decimal_handling == "string", "connector mode must send string decimals (DECIMAL(65,30) exact)"
    assert {table_keys(config, t).landing for t in config.tables}.isdisjoint(
        {k for a in defs.assets if isinstance(a, dg.AssetsDefinition) for k in a.keys}
    ), "in connector mode the landing tables are external (the sink writes them)"
    # Its changefeed (materialised by the shared source, before the data) writes string decimals to its own topics.
    with defs.resources["ticdc"].get_client() as client:
        sink_uri = client.get(config.source.changefeed_id).sink_uri_masked
    assert "avro-decimal-handling-mode=string" in sink_uri, sink_uri

    cloud = ConfluentCloudConnect(settle_polls=0)
    meta = _reconcile_sink(defs, config, cloud)
    assert (meta["action"], meta["topics"]) == ("create", len(config.tables))
    # The stand-in sink runs the very config Dagster reconciled, pins included.
    stored = cloud.stored_config(config.connectors.snowflake_sink_name)
    assert {k: stored[k] for k in ("snowflake.ingestion.method", "behavior.on.null.values",
                                   "snowflake.enable.schematization", "snowflake.metadata.all")} == {
        "snowflake.ingestion.method": "SNOWPIPE", "behavior.on.null.values": "DEFAULT",
        "snowflake.enable.schematization": "false", "snowflake.metadata.all": "true"}
    spec = SinkSpec.from_connector_config(stored)
    assert (spec.group_id, spec.ingestion_method, spec.drop_tombstones) == (
        f"connect-{config.connectors.snowflake_sink_name}", "SNOWPIPE", False)
    assert {r.topic: r.table for r in spec.routes} == {config.topic(t): table_names(config, t).landing
                                                       for t in config.tables}

    run_workload(pipeline, transactions=TRANSACTIONS, seed=11)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)

    # --- connector 3.x, SNOWPIPE ---------------------------------------------------------------------
    kafka, registry = _clients(lab_settings)
    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        # A crash between writing and committing: the first records of each partition land twice.
        with pytest.raises(SimulatedCrash):
            deliver(spec, kafka=kafka, registry=registry, connection=sf, max_records_per_partition=CRASH_RECORDS,
                    crash_before_commit=True)
        # Then files of FILE_RECORDS records, ingested in a random order, four of them twice, three left on the
        # stage while later files of their partition land.
        first = deliver(spec, kafka=kafka, registry=registry, connection=sf, file_records=FILE_RECORDS,
                        shuffle=random.Random(13), duplicate_files=4, withhold_files=3)
        assert deliver(spec, kafka=kafka, registry=registry, connection=sf).records == 0, "offsets were committed"
    assert first.records > 0 and len(first.withheld) == 3
    counts = _landing_counts(config, lab_settings)
    assert any(rows > distinct for rows, distinct in counts.values()), counts

    merged = _merge(defs, config)
    watermarks = _watermarks(config, lab_settings)
    for f in first.withheld:
        table = next(t for t in config.tables if table_names(config, t).landing == f.table)
        # The crashed delivery landed each partition's first CRASH_RECORDS already, so a withheld first file's
        # hole starts after them.
        first_hole = min(max(w.offsets[0], CRASH_RECORDS) for w in first.withheld
                         if (w.table, w.partition) == (f.table, f.partition))
        # Nothing merged past the hole, and the run's metadata says what waits (the partition's first hole).
        assert watermarks[table.table].get(f.partition, -1) < first_hole, (table.table, f)
        held = merged[table.table]["held_back"]
        assert any(h.startswith(f"partition {f.partition}: offsets {first_hole}..") for h in held), (held, f)

    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        assert ingest_withheld(spec, first.withheld, sf) > 0  # the pipe gets to them at last
    merged = _merge(defs, config)
    assert all(m["held_back"] == "(none)" for m in merged.values()), {t: m["held_back"] for t, m in merged.items()}
    assert_replicas_equal_sources(pipeline["config"], pipeline["conn_kwargs"], lab_settings)

    # --- upgraded to connector 4.x: Snowpipe Streaming, NULL tombstones, push times -------------------
    run_workload(pipeline, transactions=TRANSACTIONS, seed=12)
    wait_for_checkpoint(defs.resources["ticdc"], config.source.changefeed_id)
    streaming = dataclasses.replace(spec, ingestion_method="SNOWPIPE_STREAMING")
    with sf_connector.connect(**connection_args(lab_settings)) as sf:
        second = deliver(streaming, kafka=kafka, registry=registry, connection=sf, layout="4.x")
        assert second.records > 0
        cur = sf.cursor()
        new_order = table_names(config, next(t for t in config.tables if t.table == "new_order")).landing
        cur.execute(f'SELECT COUNT(*), COUNT_IF("RECORD_CONTENT" IS NULL) FROM {new_order.sql} '
                    'WHERE "RECORD_METADATA":"SnowflakeConnectorPushTime" IS NOT NULL')
        rows_4x, tombstones_4x = cur.fetchone()
        assert rows_4x > 0 and tombstones_4x > 0, "4.x rows with NULL tombstones (TPC-C deliveries delete new orders)"
    _merge(defs, config)
    assert_replicas_equal_sources(pipeline["config"], pipeline["conn_kwargs"], lab_settings)

    # Reconciling again with the same config changes nothing.
    puts = len([r for r in cloud.requests if r.method == "PUT"])
    assert _reconcile_sink(defs, config, cloud)["action"] == "noop"
    assert len([r for r in cloud.requests if r.method == "PUT"]) == puts
