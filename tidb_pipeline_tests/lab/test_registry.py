"""The lab registry: Avro compatibility rules (pure) and the REST subset through confluent-kafka's own client.

The server runs as a real lab service on a free port with its data under a tmp folder; the tests share
it and each uses its own subjects.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from tidb_pipeline.lab.registry import (
    CONTENT_TYPE,
    RegistryError,
    RegistryService,
    canonical_text,
    compatibility_problems,
    parse_avro,
    reader_incompatibilities,
)
from tidb_pipeline.lab.service import down, up
from tidb_pipeline_tests.lab_resources import private_part


def _record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}
ORDER_V1 = _record(
    "Order",
    {"name": "id", "type": "long"},
    {"name": "amount", "type": DECIMAL},
    {"name": "note", "type": ["null", "string"], "default": None},
    namespace="lab.test",
)
ORDER_V2_DEFAULTED = {**ORDER_V1, "fields": [*ORDER_V1["fields"], {"name": "qty", "type": "int", "default": 0}]}
ORDER_V2_NO_DEFAULT = {**ORDER_V1, "fields": [*ORDER_V1["fields"], {"name": "qty", "type": "int"}]}


def _schema(schema: dict[str, Any]) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


def _problems(reader: Any, writer: Any) -> list[str]:
    return reader_incompatibilities(parse_avro(json.dumps(reader)), parse_avro(json.dumps(writer)))


def _error(exc_info: pytest.ExceptionInfo[SchemaRegistryError]) -> tuple[int, int]:
    return exc_info.value.http_status_code, exc_info.value.error_code


# --- Avro compatibility, no server ----------------------------------------------------------------


def test_added_field_needs_a_default_for_the_reader() -> None:
    assert _problems(ORDER_V2_DEFAULTED, ORDER_V1) == []
    assert _problems(ORDER_V2_NO_DEFAULT, ORDER_V1) == [
        "/fields/qty: reader field has no default and the writer lacks it"
    ]
    # The writer having an extra field is always fine: the reader skips it.
    assert _problems(ORDER_V1, ORDER_V2_NO_DEFAULT) == []


@pytest.mark.parametrize(
    ("writer", "reader", "ok"),
    [
        ("int", "long", True),
        ("int", "double", True),
        ("long", "float", True),
        ("float", "double", True),
        ("string", "bytes", True),
        ("bytes", "string", True),
        ("long", "int", False),
        ("double", "float", False),
        ("string", "int", False),
        ("boolean", "int", False),
    ],
)
def test_field_type_changes_follow_avro_promotion(writer: str, reader: str, ok: bool) -> None:
    problems = _problems(_record("R", {"name": "a", "type": reader}), _record("R", {"name": "a", "type": writer}))
    assert problems == ([] if ok else [f"/fields/a: reader type {reader} cannot read writer type {writer}"])


def test_unions_widen_but_do_not_narrow() -> None:
    plain = _record("R", {"name": "a", "type": "int"})
    nullable = _record("R", {"name": "a", "type": ["null", "int"]})
    wider = _record("R", {"name": "a", "type": ["null", "long", "string"]})
    assert _problems(nullable, plain) == []
    assert _problems(wider, nullable) == []  # null->null, int->long
    assert _problems(plain, nullable) == ["/fields/a/0: reader type int cannot read writer type null"]
    assert _problems(nullable, wider) == [
        "/fields/a/1: reader union has no branch that reads the writer's long",
        "/fields/a/2: reader union has no branch that reads the writer's string",
    ]


def test_nested_records_named_types_enums_and_fixed() -> None:
    inner_v1 = _record("Inner", {"name": "x", "type": "int"})
    inner_v2 = _record("Inner", {"name": "x", "type": "int"}, {"name": "y", "type": "string"})
    outer = lambda inner: _record(  # noqa: E731 - a one-line schema factory
        "Outer", {"name": "first", "type": inner}, {"name": "again", "type": ["null", "Inner"], "default": None}
    )
    assert _problems(outer(inner_v1), outer(inner_v1)) == []
    # The nested reader field lacks a default; the named reference `again` is checked too.
    assert _problems(outer(inner_v2), outer(inner_v1)) == [
        "/fields/first/fields/y: reader field has no default and the writer lacks it",
        "/fields/again/1/fields/y: reader field has no default and the writer lacks it",
    ]
    assert _problems(_record("Renamed", {"name": "x", "type": "int"}), inner_v1) == [
        ": reader name Renamed does not match writer name Inner"
    ]
    assert _problems(_record("Renamed", {"name": "x", "type": "int"}, aliases=["Inner"]), inner_v1) == []
    # A namespace change alone keeps the unqualified name, as Avro's schemaNameEquals allows.
    assert _problems({**inner_v1, "namespace": "other"}, inner_v1) == []

    enum = lambda *symbols, **extra: {"type": "enum", "name": "E", "symbols": list(symbols), **extra}  # noqa: E731
    assert _problems(enum("A", "B", "C"), enum("A", "B")) == []
    assert _problems(enum("A"), enum("A", "B")) == [": reader enum E lacks writer symbols ['B']"]
    assert _problems(enum("A", "Z", default="Z"), enum("A", "B")) == []

    fixed = lambda size: {"type": "fixed", "name": "F", "size": size}  # noqa: E731
    assert _problems(fixed(4), fixed(4)) == []
    assert _problems(fixed(8), fixed(4)) == [": fixed size 8 cannot read fixed size 4"]
    assert _problems({"type": "array", "items": "long"}, {"type": "array", "items": "int"}) == []
    assert _problems({"type": "map", "values": "int"}, {"type": "map", "values": "long"}) == [
        "/values: reader type int cannot read writer type long"
    ]


def test_field_aliases_and_recursive_records() -> None:
    renamed = _record("R", {"name": "b", "type": "int", "aliases": ["a"]})
    assert _problems(renamed, _record("R", {"name": "a", "type": "int"})) == []
    node = _record("Node", {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]})
    node_wider = _record("Node", {"name": "v", "type": "long"}, {"name": "next", "type": ["null", "Node"]})
    assert _problems(node_wider, node) == []
    assert _problems(node, node_wider) == ["/fields/v: reader type int cannot read writer type long"]


def test_levels() -> None:
    v1, v2, v3 = (parse_avro(json.dumps(s)) for s in (ORDER_V1, ORDER_V2_DEFAULTED, ORDER_V2_NO_DEFAULT))
    drop_note = parse_avro(json.dumps({**ORDER_V1, "fields": ORDER_V1["fields"][:2]}))
    assert compatibility_problems("NONE", v3, [v1]) == []
    assert compatibility_problems("BACKWARD", v2, [v1]) == []
    assert compatibility_problems("BACKWARD", v3, [v1]) != []
    # FORWARD: the old schema must read new data; dropping a field with a default is fine, adding any field too.
    assert compatibility_problems("FORWARD", v3, [v1]) == []
    assert compatibility_problems("FORWARD", drop_note, [v1]) == []
    assert compatibility_problems("FULL", v2, [v1]) == []
    assert compatibility_problems("FULL", v3, [v1]) == [
        "BACKWARD /fields/qty: reader field has no default and the writer lacks it"
    ]
    # Transitive levels compare with every earlier version, plain ones only with the latest.
    assert compatibility_problems("FORWARD", v1, [v3, drop_note]) == []
    assert compatibility_problems("FORWARD_TRANSITIVE", v1, [v3, drop_note]) == [
        "FORWARD /fields/qty: reader field has no default and the writer lacks it"
    ]


def _ticdc_value(*extra: dict[str, Any], flag_type: str = "int") -> dict[str, Any]:
    """A value schema shaped like TiCDC's (spec/ticdc-avro.md): types carry connect.parameters."""
    return _record(
        "t",
        {"name": "id", "type": {"type": "long", "connect.parameters": {"tidb_type": "BIGINT"}}},
        {
            "name": "price",
            "type": {
                "type": "bytes",
                "connect.parameters": {"tidb_type": "DECIMAL"},
                "logicalType": "decimal",
                "precision": 10,
                "scale": 2,
            },
        },
        {"default": 1, "name": "flag", "type": {"type": flag_type, "connect.parameters": {"tidb_type": "INT"}}},
        *extra,
        namespace="default.test",
    )


def test_ticdc_shaped_evolution_under_backward() -> None:
    v1 = parse_avro(json.dumps(_ticdc_value()))
    nullable_column = {
        "default": None,
        "name": "name",
        "type": ["null", {"type": "string", "connect.parameters": {"tidb_type": "TEXT"}}],
    }
    not_null_no_default = {"name": "qty", "type": {"type": "int", "connect.parameters": {"tidb_type": "INT"}}}
    assert compatibility_problems("BACKWARD", parse_avro(json.dumps(_ticdc_value(nullable_column))), [v1]) == []
    # INT -> BIGINT is an Avro promotion.
    assert compatibility_problems("BACKWARD", parse_avro(json.dumps(_ticdc_value(flag_type="long"))), [v1]) == []
    assert compatibility_problems("BACKWARD", parse_avro(json.dumps(_ticdc_value(not_null_no_default))), [v1]) == [
        "BACKWARD /fields/qty: reader field has no default and the writer lacks it"
    ]


def test_invalid_schemas_are_rejected_with_42201() -> None:
    for text in (
        "not json",
        json.dumps({"type": "nope"}),
        json.dumps(_record("R", {"name": "a", "type": "int", "default": "text"})),
        json.dumps({"type": "record", "name": "R"}),
    ):
        with pytest.raises(RegistryError) as exc_info:
            parse_avro(text)
        assert (exc_info.value.status, exc_info.value.error_code) == (422, 42201), text


def test_canonical_text_ignores_whitespace_only() -> None:
    assert canonical_text('{ "type" :  "string" }') == '{"type":"string"}'
    assert canonical_text('{"b": 1, "a": 2}') == '{"b":1,"a":2}'


# --- the running service ------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    with private_part(RegistryService, tmp_path_factory.mktemp("lab")) as svc:
        yield svc


def _new_client(service: RegistryService) -> SchemaRegistryClient:
    # The client caches ids and versions; a fresh one makes the server answer.
    return SchemaRegistryClient({"url": service.address()})


@pytest.fixture
def client(service: RegistryService) -> SchemaRegistryClient:
    return _new_client(service)


def test_root_answers_an_empty_object(service: RegistryService) -> None:
    response = httpx.get(f"{service.address()}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    assert response.json() == {}
    assert response.content == b"{}"


def test_unknown_route_and_associations_answer_404_with_an_error_body(service: RegistryService) -> None:
    for path in ("/associations/resources/-/orders", "/associations/resources/lkc-1/orders", "/nowhere"):
        response = httpx.get(f"{service.address()}{path}")
        assert (response.status_code, response.json()) == (404, {"error_code": 404, "message": "HTTP 404 Not Found"})


def test_identical_schema_gets_the_same_id_in_every_subject(
    service: RegistryService, client: SchemaRegistryClient
) -> None:
    first = client.register_schema("same-a", _schema(ORDER_V1))
    assert _new_client(service).register_schema("same-a", _schema(ORDER_V1)) == first
    # Whitespace does not make a new schema; another subject reuses the id.
    spaced = Schema(json.dumps(ORDER_V1, indent=4), "AVRO")
    assert client.register_schema("same-b", spaced) == first
    assert client.get_versions("same-a") == [1]
    assert client.get_versions("same-b") == [1]
    other = client.register_schema("same-c", _schema(ORDER_V2_DEFAULTED))
    assert other != first


def test_lookup_get_by_id_and_versions(client: SchemaRegistryClient) -> None:
    v1 = client.register_schema("look-value", _schema(ORDER_V1))
    v2 = client.register_schema("look-value", _schema(ORDER_V2_DEFAULTED))

    found = client.lookup_schema("look-value", _schema(ORDER_V1))
    assert (found.subject, found.schema_id, found.version) == ("look-value", v1, 1)

    assert client.get_schema(v2).schema_str == json.dumps(ORDER_V2_DEFAULTED, separators=(",", ":"))
    latest = client.get_latest_version("look-value")
    assert (latest.subject, latest.schema_id, latest.version) == ("look-value", v2, 2)
    assert json.loads(latest.schema.schema_str) == ORDER_V2_DEFAULTED
    first = client.get_version("look-value", 1)
    assert (first.schema_id, first.version, json.loads(first.schema.schema_str)) == (v1, 1, ORDER_V1)

    assert client.get_versions("look-value") == [1, 2]
    assert "look-value" in client.get_subjects()

    with pytest.raises(SchemaRegistryError) as exc_info:
        client.lookup_schema("look-missing", _schema(ORDER_V1))
    assert _error(exc_info) == (404, 40401)
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.lookup_schema("look-value", _schema(ORDER_V2_NO_DEFAULT))
    assert _error(exc_info) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_schema(999_999)
    assert _error(exc_info) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_version("look-value", 7)
    assert _error(exc_info) == (404, 40402)
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_versions("look-missing")
    assert _error(exc_info) == (404, 40401)


def test_compatibility_config(service: RegistryService, client: SchemaRegistryClient) -> None:
    assert client.get_compatibility() == "BACKWARD"
    # As in Confluent, a subject without its own level is a 404 unless defaultToGlobal is asked for.
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_compatibility("cfg-value")
    assert _error(exc_info) == (404, 40408)
    raw = httpx.get(f"{service.address()}/config/cfg-value", params={"defaultToGlobal": "true"})
    assert raw.json() == {"compatibilityLevel": "BACKWARD"}

    assert client.set_compatibility("cfg-value", "full") == {"compatibility": "FULL"}
    assert client.get_compatibility("cfg-value") == "FULL"
    assert client.get_compatibility() == "BACKWARD"
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.set_compatibility("cfg-value", "SIDEWAYS")
    assert _error(exc_info) == (422, 42203)
    # DELETE /config/{subject}: back to the global level; answers the level it dropped, 40401 when there is none.
    dropped = httpx.delete(f"{service.address()}/config/cfg-value")
    assert (dropped.status_code, dropped.json()) == (200, {"compatibilityLevel": "FULL"})
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_compatibility("cfg-value")
    assert _error(exc_info) == (404, 40408)
    again = httpx.delete(f"{service.address()}/config/cfg-value")
    assert (again.status_code, again.json()["error_code"]) == (404, 40401)


def test_backward_rejects_a_field_without_default_and_accepts_one_with(client: SchemaRegistryClient) -> None:
    first = client.register_schema("evolve-value", _schema(ORDER_V1))
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.register_schema("evolve-value", _schema(ORDER_V2_NO_DEFAULT))
    assert _error(exc_info) == (409, 40901)  # 409 before Confluent 8.x (ef43652bfec)
    message = exc_info.value.error_message
    assert message.startswith('Schema being registered is incompatible with an earlier schema for subject '
                              '"evolve-value", details: [{errorType:\'READER_FIELD_MISSING_DEFAULT_VALUE\'')
    assert "qty" in message and "{oldSchemaVersion: 1}" in message
    assert message.endswith("{validateFields: 'false', compatibility: 'BACKWARD'}]")
    assert client.get_versions("evolve-value") == [1]

    second = client.register_schema("evolve-value", _schema(ORDER_V2_DEFAULTED))
    assert second != first
    assert client.get_versions("evolve-value") == [1, 2]
    # Re-registering an older version returns its id without a check or a new version.
    assert client.register_schema("evolve-value", _schema(ORDER_V1)) == first
    assert client.get_versions("evolve-value") == [1, 2]

    client.set_compatibility("evolve-value", "NONE")
    client.register_schema("evolve-value", _schema(ORDER_V2_NO_DEFAULT))
    assert client.get_versions("evolve-value") == [1, 2, 3]


def test_invalid_schema_is_422(client: SchemaRegistryClient) -> None:
    bad = Schema(json.dumps(_record("R", {"name": "a", "type": "no_such_type"})), "AVRO")
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.register_schema("bad-value", bad)
    assert _error(exc_info) == (422, 42201)
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_versions("bad-value")
    assert _error(exc_info) == (404, 40401)


def test_delete_subject_soft_then_permanent(service: RegistryService, client: SchemaRegistryClient) -> None:
    v1 = client.register_schema("del-value", _schema(ORDER_V1))
    client.register_schema("del-value", _schema(ORDER_V2_DEFAULTED))
    assert client.delete_subject("del-value") == [1, 2]
    assert "del-value" not in client.get_subjects()
    assert "del-value" in client.get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as exc_info:
        client.get_versions("del-value")
    assert _error(exc_info) == (404, 40401)
    # Ids are global and survive; a new registration continues the version numbers.
    fresh = _new_client(service)
    assert json.loads(fresh.get_schema(v1).schema_str) == ORDER_V1
    assert fresh.register_schema("del-value", _schema(ORDER_V1)) == v1
    assert client.get_versions("del-value") == [3]

    assert client.delete_subject("del-value") == [3]
    assert client.delete_subject("del-value", permanent=True) == [1, 2, 3]
    assert "del-value" not in client.get_subjects(deleted=True)


def test_state_survives_a_restart(service: RegistryService) -> None:
    before_client = _new_client(service)
    ids = [
        before_client.register_schema("durable-value", _schema(s)) for s in (ORDER_V1, ORDER_V2_DEFAULTED)
    ]
    before_client.set_compatibility("durable-value", "FULL")

    down([service], log=lambda _msg: None)
    assert service.pid() is None
    up([service], log=lambda _msg: None)

    after = _new_client(service)
    assert after.get_versions("durable-value") == [1, 2]
    latest = after.get_latest_version("durable-value")
    assert (latest.schema_id, latest.version) == (ids[1], 2)
    assert json.loads(after.get_schema(ids[0]).schema_str) == ORDER_V1
    assert after.register_schema("durable-value", _schema(ORDER_V1)) == ids[0]
    assert after.get_compatibility("durable-value") == "FULL"
    # The id sequence continues rather than restarting.
    assert after.register_schema("durable-other", _schema({**ORDER_V1, "name": "Other"})) > max(ids)


@pytest.mark.parametrize("conf", [{}, {"subject.name.strategy.type": "TOPIC"}], ids=["associated-fallback", "topic"])
def test_avro_serializer_round_trip(
    service: RegistryService, client: SchemaRegistryClient, conf: dict[str, str]
) -> None:
    topic = f"roundtrip-{'topic' if conf else 'default'}"
    serializer = AvroSerializer(client, json.dumps(ORDER_V2_DEFAULTED), conf=conf)
    value = {"id": 42, "amount": Decimal("12.34"), "note": None, "qty": 3}
    ctx = SerializationContext(topic, MessageField.VALUE)
    data = serializer(value, ctx)
    assert data is not None

    # The default strategy asks /associations first, gets 404 and falls back to "{topic}-value".
    asked = f"GET /associations/resources/-/{topic}?" in service.log_file.read_text()
    assert asked == (not conf)
    registered = client.get_latest_version(f"{topic}-value")
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, registered.schema_id)

    deserializer = AvroDeserializer(_new_client(service))
    assert deserializer(data, ctx) == value
