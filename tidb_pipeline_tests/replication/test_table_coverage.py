"""The changefeed filter vs TiDB vs the config: each disagreement named, with the discover command."""

from tidb_pipeline.replication.table_coverage import coverage, discover_command


def test_each_kind_of_disagreement() -> None:
    asked: list[tuple[str, str]] = []

    def replicable(db: str, t: str) -> bool:
        asked.append((db, t))
        return t != "history"  # no handle key

    cov = coverage(
        configured=[("tpcc", "orders"), ("tpcc", "item"), ("tpcc", "old"), ("shop", "cart")],
        tidb=[("tpcc", "orders"), ("tpcc", "item"), ("tpcc", "history"), ("tpcc", "coupons"), ("shop", "cart"),
              ("shop", "wish"), ("other", "x"), ("Hostile-DB", "Order")],
        rules=["tpcc.orders", "tpcc.old", "shop.*", "Hostile\\-DB.order"],  # item dropped from the running filter
        replicable=replicable,
    )
    assert cov.unconfigured == ("Hostile-DB.Order", "shop.wish")  # case-insensitive, as TiCDC by default
    assert cov.gone == ("tpcc.old",)
    assert cov.unfiltered == ("tpcc.item",)
    assert cov.new == ("tpcc.coupons",)
    assert sorted(asked) == [("tpcc", "coupons"), ("tpcc", "history")]  # only candidates are looked up
    assert cov.command == "tidb-pipeline discover -d Hostile-DB -d shop -d tpcc"
    assert not cov.clean


def test_agreement_and_quoting() -> None:
    cov = coverage(configured=[("a", "t")], tidb=[("a", "t")], rules=["a.t"], output="conf/my pipeline.yaml")
    assert cov.clean and cov.command == "tidb-pipeline discover -d a -o 'conf/my pipeline.yaml'"
    assert discover_command(["we'ird"]) == "tidb-pipeline discover -d 'we'\"'\"'ird'"
