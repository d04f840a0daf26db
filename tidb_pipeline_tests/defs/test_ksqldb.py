"""ksqlDB stream assets, materialised through the ksqlDB stand-in with columns from the lab schema registry."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import dagster as dg
import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tidb_pipeline.config import PipelineConfig, parse_config
from tidb_pipeline.defs.ksqldb import build_all_ksqldb_assets, build_ksqldb_assets, ksqldb_key
from tidb_pipeline.defs.tables import table_keys
from tidb_pipeline.lab.ksqldb import KsqlDbStandIn
from tidb_pipeline.lab.service import Service
from tidb_pipeline.replication.ksqldb import create_statement
from tidb_pipeline.resources.ksqldb import Column, KsqlDbClient, KsqlDbResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource

# The resource Dagster builds from config cannot carry a transport, so it finds its stand-in by URL.
_STAND_INS: dict[str, KsqlDbStandIn] = {}


class StandInKsqlDb(KsqlDbResource):
    def get_client(self, *, transport: httpx.BaseTransport | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> KsqlDbClient:
        return super().get_client(transport=transport or _STAND_INS[self.url].transport(), sleep=lambda _s: None)


KEY = {"type": "record", "name": "Key", "namespace": "tidb.t", "fields": [{"name": "i_id", "type": "int"}]}
FIELDS_V1: list[dict[str, Any]] = [
    {"name": "i_id", "type": "int"},
    {"name": "i_name", "type": ["null", "string"], "default": None},
    {"name": "_tidb_op", "type": ["null", "string"], "default": None},
]


def _value(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": "Value", "namespace": "tidb.t", "fields": fields}


class Setup:
    def __init__(self, registry: Service) -> None:
        self.db = f"db{uuid.uuid4().hex[:8]}"
        self.config: PipelineConfig = parse_config({"tables": [{"db": self.db, "table": "item"}]})
        self.table = self.config.tables[0]
        self.topic = self.config.topic(self.table)
        self.stream = self.topic.upper()
        self.registry = SchemaRegistryClient({"url": registry.address()})
        self.stand_in = KsqlDbStandIn(registry_url=registry.address(), api_key="K", api_secret="S/+@:%?",
                                      url=f"https://pksqlc-{self.db}.test:443")
        _STAND_INS[self.stand_in.url] = self.stand_in
        self.resources = {
            "ksqldb": StandInKsqlDb(url=self.stand_in.url, api_key="K", api_secret="S/+@:%?"),
            "schema_registry": SchemaRegistryResource(url=registry.address()),
        }
        self.instance = dg.DagsterInstance.ephemeral()
        (self.asset,) = build_ksqldb_assets(config=self.config, table=self.table)

    def register(self, fields: list[dict[str, Any]]) -> None:
        self.registry.register_schema(f"{self.topic}-key", Schema(json.dumps(KEY), "AVRO"))
        self.registry.register_schema(f"{self.topic}-value", Schema(json.dumps(_value(fields)), "AVRO"))

    def materialize(self) -> dict[str, Any]:
        result = dg.materialize([self.asset], resources=self.resources, instance=self.instance)
        assert result.success
        (event,) = result.get_asset_materialization_events()
        metadata = event.materialization.metadata
        return {k: v.value for k, v in metadata.items()}

    def posted(self) -> list[str]:
        return [r.body["ksql"] for r in self.stand_in.requests if r.method == "POST"]

    def columns(self) -> tuple[Column, ...]:
        info = self.resources["ksqldb"].get_client().describe_stream(self.stream)
        assert info is not None
        return info.columns


@pytest.fixture
def setup(registry: Service) -> Setup:
    return Setup(registry)


def _schema(*columns: tuple[str, str, str | None]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d in columns])


V1_COLUMNS = (("ROWKEY", "STRUCT<I_ID INTEGER>", "key"), ("I_ID", "INTEGER", None), ("I_NAME", "STRING", None),
              ("_TIDB_OP", "STRING", None))


@pytest.mark.integration
def test_create_then_noop_then_replace_on_new_version(setup: Setup) -> None:
    waiting = setup.materialize()
    assert (waiting["action"], waiting["reasons"]) == ("wait", f"subject {setup.topic}-value has no schema yet; "
                                                                f"subject {setup.topic}-key has no schema yet")
    assert setup.posted() == ["LIST STREAMS;"]

    setup.register(FIELDS_V1)
    setup.stand_in.requests.clear()
    created = setup.materialize()
    statement = create_statement(setup.stream, setup.topic)
    assert created == {
        "stream": setup.stream, "topic": setup.topic, "action": "create", "reasons": "stream missing",
        "statement": statement, "command_status": "Stream created",
        "latest_value_subject_version": 1, "value_schema_id": created["value_schema_id"],
        "value_subject_version": 1, "key_subject_version": 1,
        "dagster/column_schema": _schema(*V1_COLUMNS), "read_queries": "(none)",
    }
    assert setup.posted() == ["LIST STREAMS;", statement, "LIST STREAMS;", f"DESCRIBE `{setup.stream}`;"]
    assert "S/+@:%?" not in repr(created)
    # The DESCRIBE after the CREATE waits for the command's sequence number.
    assert setup.stand_in.requests[-1].body["commandSequenceNumber"] == 1

    setup.stand_in.requests.clear()
    again = setup.materialize()
    assert (again["action"], again["statement"], again["value_subject_version"]) == ("noop", "(none)", 1)
    assert setup.posted() == ["LIST STREAMS;", f"DESCRIBE `{setup.stream}`;"]

    # A new subject version: the stream does not follow it by itself...
    setup.register([*FIELDS_V1, {"name": "i_price", "type": ["null", "double"], "default": None}])
    assert [c.name for c in setup.columns()] == ["ROWKEY", "I_ID", "I_NAME", "_TIDB_OP"]
    # ...the asset replaces it.
    replaced = setup.materialize()
    assert (replaced["action"], replaced["statement"]) == ("replace", create_statement(setup.stream, setup.topic,
                                                                                       replace=True))
    assert replaced["reasons"] == (f"{setup.topic}-value is at version 2, the stream was built from 1; "
                                   "value columns differ: new I_PRICE")
    assert (replaced["value_subject_version"], replaced["key_subject_version"]) == (2, 1)
    assert replaced["dagster/column_schema"] == _schema(*V1_COLUMNS, ("I_PRICE", "DOUBLE", None))
    assert setup.materialize()["action"] == "noop"


@pytest.mark.integration
def test_type_change_with_same_names_is_seen_through_the_recorded_version(setup: Setup) -> None:
    setup.register(FIELDS_V1)
    assert setup.materialize()["action"] == "create"
    # int → long is a BACKWARD-compatible promotion: same column names, new version.
    widened = [{"name": "i_id", "type": "long"}, *FIELDS_V1[1:]]
    setup.register(widened)
    replaced = setup.materialize()
    assert (replaced["action"], replaced["reasons"]) == (
        "replace", f"{setup.topic}-value is at version 2, the stream was built from 1")
    assert ("I_ID", "BIGINT") in [(c.name, c.type) for c in setup.columns()]


@pytest.mark.integration
def test_stream_created_elsewhere_is_judged_by_its_columns(setup: Setup) -> None:
    setup.register(FIELDS_V1)
    client = setup.resources["ksqldb"].get_client()
    client.execute(create_statement(setup.stream, setup.topic))
    # No record in this instance: equal column names mean up to date; nothing is claimed about versions.
    first = setup.materialize()
    assert first["action"] == "noop" and "value_subject_version" not in first
    setup.register([*FIELDS_V1, {"name": "i_data", "type": ["null", "string"], "default": None}])
    assert setup.materialize()["reasons"] == "value columns differ: new I_DATA"


@pytest.mark.integration
def test_create_lost_in_transit_is_not_a_failure(setup: Setup) -> None:
    """The CREATE ran but its answer was lost (503 after the fact): the retry finds the stream and moves on."""
    setup.register(FIELDS_V1)
    inner = setup.stand_in.transport()
    lost: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        response = inner.handle_request(request)
        if b"CREATE STREAM" in request.content and not lost:
            lost.append(request.content.decode())
            return httpx.Response(503, json={"@type": "generic_error", "error_code": 50300, "message": "lost"})
        return response

    setup.stand_in.transport = lambda: httpx.MockTransport(flaky)  # type: ignore[method-assign]
    outcome = setup.materialize()
    assert (outcome["action"], outcome["reasons"]) == ("noop", "created concurrently")
    assert len(lost) == 1 and setup.posted().count(create_statement(setup.stream, setup.topic)) == 2
    assert [c.name for c in setup.columns()] == ["ROWKEY", "I_ID", "I_NAME", "_TIDB_OP"]


def test_asset_keys_and_deps_from_the_table_list() -> None:
    config = parse_config({"tables": [{"db": "tpcc", "table": "item"}, {"db": "my-db", "table": "t.x"}]})
    assets = build_all_ksqldb_assets(config=config)
    expected = {dg.AssetKey(["ksqldb", "TIDB_TPCC_ITEM"]), dg.AssetKey(["ksqldb", "TIDB_MY_DB_T_X"])}
    assert {a.key for a in assets} == expected == {ksqldb_key(config, t) for t in config.tables}
    for asset, table in zip(assets, config.tables, strict=True):
        assert set(asset.asset_deps[asset.key]) == {table_keys(config, table).kafka}
    # Loads as definitions next to the resources it names, without touching the network.
    dg.Definitions(assets=assets, resources={"ksqldb": KsqlDbResource(),
                                             "schema_registry": SchemaRegistryResource()}).get_repository_def()
