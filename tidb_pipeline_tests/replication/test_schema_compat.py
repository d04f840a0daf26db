"""Registry compatibility in TiDB's terms: the schemas are TiCDC's own (`ticdc_schema`), the rules the registry's."""

import json

import pytest

from tidb_pipeline.replication import schema_compat as sc
from tidb_pipeline.replication import ticdc_schema as ts

CFG = ts.CodecConfig(enable_tidb_extension=True)
URL = "https://key:s3cret@psrc-1.example.com/"
BASE = (ts.Column("id", "bigint", False), ts.Column("name", "varchar", True), ts.Column("qty", "bigint", False))


def _value(*columns: ts.Column) -> str:
    return ts.value_schema(ts.TableInfo("shop", "orders", columns, ("id",)), CFG)


def _verdict(new: str, level: str = "BACKWARD", old: str | None = None) -> sc.SubjectVerdict | None:
    names = [f["name"] for f in json.loads(new)["fields"]] + [f["name"] for f in json.loads(old or _value(*BASE))["fields"]]
    return sc.verdict(db="shop", table="orders", subject="tidb_shop_orders-value", level=level,
                      versions=[(3, old or _value(*BASE))], new=new, columns=sc.field_to_column(names),
                      registry_url=URL, with_auth=True, column_types={"price": "decimal(12,2)"})


@pytest.mark.parametrize("added", [
    ts.Column("note", "varchar", True),  # NULL-able: default null
    ts.Column("flag", "tinyint", False, default="1"),  # NOT NULL with a default
])
def test_compatible_changes_pass(added: ts.Column) -> None:
    assert _verdict(_value(*BASE, added)) is None
    assert _verdict(_value(*BASE[:2])) is None  # a dropped column: BACKWARD readers ignore it
    assert _verdict(_value(BASE[0], BASE[1], ts.Column("qty", "bigint", True))) is None  # NOT NULL -> NULL


def test_not_null_column_without_default_names_table_change_and_both_fixes() -> None:
    v = _verdict(_value(*BASE, ts.Column("weight", "int", False)))
    assert v is not None and v.table == "shop.orders" and v.level == "BACKWARD"
    [change] = v.changes
    assert change.column == "weight"
    assert change.change.startswith("column `weight` added as INT NOT NULL without a default (Avro int): TiCDC "
                                    "gives it no Avro default, so the new schema cannot read records written with "
                                    "version 3")
    assert change.ddl == "ALTER TABLE `shop`.`orders` ALTER COLUMN `weight` SET DEFAULT 0"
    let_in, ddl = v.fixes
    assert ("curl -sS -X PUT -u \"$SCHEMA_REGISTRY_API_KEY:$SCHEMA_REGISTRY_API_SECRET\" -H 'Content-Type: "
            "application/vnd.schemaregistry.v1+json' --data '{\"compatibility\": \"NONE\"}' "
            "https://psrc-1.example.com/config/tidb_shop_orders-value") in let_in
    # The subject followed the global level: restoring drops its own level instead of pinning BACKWARD on it.
    assert "restore the level: curl -sS -X DELETE -u \"$SCHEMA_REGISTRY_API_KEY:$SCHEMA_REGISTRY_API_SECRET\" " \
           "https://psrc-1.example.com/config/tidb_shop_orders-value" in let_in
    pinned = sc.verdict(db="shop", table="orders", subject="tidb_shop_orders-value", level="BACKWARD",
                        versions=[(3, _value(*BASE))], new=_value(*BASE, ts.Column("weight", "int", False)),
                        columns={}, registry_url=URL, with_auth=False, subject_level=True)
    assert pinned is not None and pinned.restore == (
        "curl -sS -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' --data "
        "'{\"compatibility\": \"BACKWARD\"}' https://psrc-1.example.com/config/tidb_shop_orders-value")
    assert "s3cret" not in " ".join(v.fixes)  # credentials come from the environment, never the message
    assert ddl.endswith(change.ddl)


def test_decimal_not_null_narrowing_and_null_to_not_null() -> None:
    price = ts.Column("price", "decimal", False, default="0", precision=12, scale=2)
    [c] = _verdict(_value(*BASE, price)).changes  # type: ignore[union-attr]
    assert "DECIMAL(12,2) NOT NULL without a default" in c.change  # decimals never get a default
    assert c.ddl == "ALTER TABLE `shop`.`orders` MODIFY COLUMN `price` decimal(12,2) NULL"
    [c] = _verdict(_value(BASE[0], BASE[1], ts.Column("qty", "int", False))).changes  # type: ignore[union-attr]
    assert c.change.startswith("column `qty` changed type: BIGINT NOT NULL without a default (Avro long) -> "
                               "INT NOT NULL without a default (Avro int)")
    assert c.ddl == "ALTER TABLE `shop`.`orders` MODIFY COLUMN `qty` BIGINT NOT NULL"
    old = _value(BASE[0], BASE[1], ts.Column("qty", "bigint", True))
    [c] = _verdict(_value(*BASE), old=old).changes  # type: ignore[union-attr]
    assert c.change.startswith("column `qty` changed from NULL to NOT NULL")
    assert c.ddl == "ALTER TABLE `shop`.`orders` MODIFY COLUMN `qty` BIGINT NULL"


def test_rename_none_and_forward() -> None:
    renamed = _value(BASE[0], BASE[1], ts.Column("quantity", "bigint", False))
    [c] = _verdict(renamed).changes  # type: ignore[union-attr]
    assert c.change.startswith("column `quantity` added (renamed from `qty`?) as BIGINT NOT NULL")
    assert _verdict(renamed, level="NONE") is None
    v = _verdict(_value(*BASE[:2]), level="FORWARD")  # dropping a NOT NULL column without default
    assert v is not None and v.changes[0].change.startswith("column `qty` dropped")
    assert "consumers on version 3 cannot read the new records" in v.changes[0].change
    assert _verdict(_value(*BASE)) is None  # the registered schema itself: TiCDC gets its id back


def test_registry_error_recognised_also_once_failed() -> None:
    assert sc.is_registry_error("CDC:ErrAvroSchemaAPIError", "[CDC:ErrAvroSchemaAPIError]schema manager API error, %s")
    assert sc.is_registry_error("CDC:ErrChangefeedUnretryable", "[CDC:ErrAvroSchemaAPIError]schema manager API error, %s")
    assert not sc.is_registry_error("CDC:ErrKafkaNewProducer", "broker down")
