"""The pipeline on the lab in `connector` landing mode: the Snowflake Sink fills the landing tables, Dagster merges.

Acceptance of issue 6: TPC-C through the TiCDC stand-in and Kafka; `confluent/<snowflake sink>` reconciles
the sink's config (against the Confluent Cloud stand-in: no managed connector runs here); the sink stand-in
(`lab.connector_landing`) runs *that* config, writing the landing tables in the connector's layout with
duplicate deliveries injected (a crash between write and offset commit, as SNOWPIPE can); the replica
assets merge. Every replica then equals its source row for row, as in builtin mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pymysql
import pytest
import snowflake.connector as sf_connector
from dagster_snowflake import SnowflakeResource

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.defs.connector_assets import confluent_key
from tidb_pipeline.defs.tables import changefeed_key, table_keys, table_names
from tidb_pipeline.lab.compare import compare_table
from tidb_pipeline.lab.confluent_cloud import ConfluentCloudConnect
from tidb_pipeline.lab.connector_landing import SimulatedCrash, SinkSpec, deliver, landing_duplicates
from tidb_pipeline.lab.service import Service
from tidb_pipeline.lab.settings import LabSettings
from tidb_pipeline.lab.snowflake import connection_args
from tidb_pipeline.replication.ddl import quote_ident
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.kafka_connect import KafkaConnectResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.workload import tpcc
from tidb_pipeline_tests.defs.lab_pipeline import lab_pipeline, materialize, tpcc_tables, wait_for_checkpoint

pytestmark = pytest.mark.integration

# A syntactically plausible key body: the stand-in stores it, nothing here authenticates with it.
KAFKA_SECRET = "kafka/secret+@:%?"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"


class _CloudConnect(KafkaConnectResource):
    """The resource Dagster builds cannot carry a transport; this one reaches the in-process stand-in."""

    def get_client(self, **_kwargs: Any) -> Any:
        return super().get_client(transport=_CLOUD[self.url].transport(), sleep=lambda _s: None)


_CLOUD: dict[str, ConfluentCloudConnect] = {}


@pytest.fixture(scope="module")
def pipeline(
    lab_settings: LabSettings, mariadb: Service, kafka: Service, registry: Service, snowflake: Service, ticdc: Service,
) -> Iterator[dict[str, Any]]:
    def config(suffix: str, tpcc_db: str) -> dict[str, Any]:
        return {
            "source": {"changefeed_id": f"cm-{suffix}"},
            "snowflake": {"database": f"CM_{suffix.upper()}"},
            "landing_mode": "connector",
            "connectors": {"snowflake_sink_name": f"snowflake-sink-{suffix}"},
            "tables": tpcc_tables(tpcc_db),
        }

    with lab_pipeline(lab_settings, mariadb, prefix="cm", config=config) as p:
        cfg = p["config"]
        # The connector expects its database and schema to exist (an operator creates them, not the sink).
        with sf_connector.connect(**connection_args(lab_settings)) as sf:
            cur = sf.cursor()
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(cfg.snowflake.database)}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(cfg.snowflake.database)}."
                        f"{quote_ident(cfg.snowflake.landing_schema)}")
        yield p


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


def _deliver_with_duplicates(spec: SinkSpec, settings: LabSettings, per_partition: int | None) -> int:
    """One crashed delivery (written, not committed) then a clean one: the crashed records land twice."""
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    registry = SchemaRegistryResource(url=settings.registry_url).get_client()
    with sf_connector.connect(**connection_args(settings)) as sf:
        with pytest.raises(SimulatedCrash):
            deliver(spec, kafka=kafka, registry=registry, connection=sf, max_records_per_partition=per_partition,
                    crash_before_commit=True)
        first = deliver(spec, kafka=kafka, registry=registry, connection=sf)
        again = deliver(spec, kafka=kafka, registry=registry, connection=sf)
    assert again.records == 0, "a delivery after the commit must start where the last one ended"
    return first.records


def _landing_counts(config: PipelineConfig, settings: LabSettings) -> dict[str, tuple[int, int]]:
    with sf_connector.connect(**connection_args(settings)) as sf:
        return {t.table: landing_duplicates(sf, table_names(config, t).landing) for t in config.tables}


def test_connector_mode_replicas_equal_source(pipeline: dict[str, Any], lab_settings: LabSettings) -> None:
    config, defs, conn_kwargs = pipeline["config"], pipeline["defs"], pipeline["conn_kwargs"]
    replicas = {table_keys(config, t).replica for t in config.tables}
    assert {table_keys(config, t).landing for t in config.tables}.isdisjoint(
        {k for a in defs.assets if isinstance(a, dg.AssetsDefinition) for k in a.keys}
    ), "in connector mode the landing tables are external (the sink writes them)"
    materialize(defs, {changefeed_key(config)})

    cloud = ConfluentCloudConnect(settle_polls=0)
    meta = _reconcile_sink(defs, config, cloud)
    assert (meta["action"], meta["topics"]) == ("create", len(config.tables))
    # The stand-in sink runs the very config Dagster reconciled.
    spec = SinkSpec.from_connector_config(cloud.stored_config(config.connectors.snowflake_sink_name))
    assert spec.group_id == f"connect-{config.connectors.snowflake_sink_name}"
    assert {r.topic: r.table for r in spec.routes} == {config.topic(t): table_names(config, t).landing
                                                       for t in config.tables}

    tpcc.prepare(conn_kwargs, database=pipeline["tpcc_db"], warehouses=1, scale=0.02)
    summary = tpcc.run(conn_kwargs, database=pipeline["tpcc_db"], duration_s=10, threads=2, seed=11)
    wait_for_checkpoint(defs, config)
    # Every record of the first delivery lands twice.
    delivered = _deliver_with_duplicates(spec, lab_settings, per_partition=None)
    counts = _landing_counts(config, lab_settings)
    assert all(rows == 2 * distinct > 0 for rows, distinct in counts.values()), counts
    assert sum(distinct for _, distinct in counts.values()) == delivered
    materialize(defs, replicas)

    summary2 = tpcc.run(conn_kwargs, database=pipeline["tpcc_db"], duration_s=15, threads=2, seed=12)
    assert summary.completed + summary2.completed > 0
    wait_for_checkpoint(defs, config)
    # A partial crash this time: only the first records of each partition are written twice.
    _deliver_with_duplicates(spec, lab_settings, per_partition=5)
    after = _landing_counts(config, lab_settings)
    assert any(after[t][0] - after[t][1] > counts[t][0] - counts[t][1] for t in after), "no new duplicates"
    materialize(defs, replicas)

    mismatches = []
    with pymysql.connect(**conn_kwargs) as src, sf_connector.connect(**connection_args(lab_settings)) as sf:
        for t in config.tables:
            cmp = compare_table(src, t.db, t.table, sf, table_names(config, t).replica, t.key)
            assert cmp.source_rows > 0, f"{cmp.source} is empty: the test would prove nothing"
            if not cmp.equal:
                mismatches.append(f"{cmp.source}: {cmp}")
    assert not mismatches, "\n".join(mismatches)

    # Reconciling again with the same config changes nothing.
    puts = len([r for r in cloud.requests if r.method == "PUT"])
    assert _reconcile_sink(defs, config, cloud)["action"] == "noop"
    assert len([r for r in cloud.requests if r.method == "PUT"]) == puts
