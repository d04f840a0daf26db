"""The lab change feed's TiDB table-filter parser against upstream's own test cases, and production's rules.

The cases restate pingcap/tidb `pkg/util/table-filter/table_filter_test.go` (TestMatchTables, TestMatchSchemas,
TestParseFailures2): (rules, [(schema, table, accepted case-sensitively, accepted case-insensitively)]).
"""

from __future__ import annotations

import pytest

from tidb_pipeline.config import TableConfig
from tidb_pipeline.replication.table_filter import FilterSyntaxError, TableFilter
from tidb_pipeline.replication.changefeed import filter_name, table_rule

MATCH_TABLES: list[tuple[list[str], list[tuple[str, str, bool, bool]]]] = [
    ([], [("foo", "bar", False, False)]),
    (["*.*"], [("foo", "bar", True, True)]),
    (["foo.*"], [("foo", "bar", True, True), ("foo1", "bar", False, False), ("foo2", "bar", False, False)]),
    (["*.*", "!foo1.*"], [("foo", "bar", True, True), ("foo1", "bar", False, False), ("foo2", "bar", True, True)]),
    (["foo.bar1"], [("foo", "bar", False, False), ("foo", "bar1", True, True), ("fff", "bar1", False, False)]),
    (["*.*", "!foo.bar"], [("foo", "bar", False, False), ("foo", "bar1", True, True), ("fff", "bar1", True, True)]),
    (["/^foo/.*", r"!/^foo/./^sbtest-\d/"],
     [("foo", "sbtest", True, True), ("foo1", "sbtest-1", False, False), ("fff", "bar", False, False)]),
    (["*.*", "!foo[bar].*", "!bar?.*", r"!special\\.*"],
     [("foor", "a", False, False), ("foo[bar]", "b", True, True), ("ba", "c", True, True), ("bar?", "d", False, False),
      ("special\\", "e", False, False), ("special\\\\", "f", True, True), ("bazzz", "g", True, True),
      ("special\\$", "h", True, True), ("afooa", "i", True, True)]),
    (["*.*", "!/^FOO/.*", "!*./FoO$/"],
     [("FOO1", "a", False, False), ("foo2", "b", True, False), ("BoO3", "cFoO", False, False),
      ("Foo4", "dfoo", True, False), ("5", "5", True, True)]),
    (["*.*", "!a?b?./f[0-9]/"],
     [("abbd", "f1", False, False), ("aaaa", "f2", True, True), ("5", "5", True, True), ("abbc", "fa", True, True)]),
    (["*.*", "!/t[0-8]/.a??"],
     [("t1", "a01", False, False), ("t9", "a02", True, True), ("5", "5", True, True), ("t8", "a001", True, True)]),
    (["*.*", "!a*.A*"], [("aB", "Ab", False, False), ("AaB", "aab", True, False), ("acB", "Afb", False, False)]),
    (["BAR.*"], [("bar", "a", False, True), ("BAR", "a", True, True)]),
    (["# comment", "x.y", "   \t"], [("x", "y", True, True), ("y", "y", False, False)]),
    (["p_123$.45", "中文.表名"],
     [("p_123", "45", False, False), ("p_123$", "45", True, True), ("英文", "表名", False, False),
      ("中文", "表名", True, True)]),
    ([r"\\\..*"], [("\\.", "a", True, True), ("\\\\\\.", "b", False, False), ("\\a", "c", False, False)]),
    (["[!a-z].[^a-z]"],
     [("!", "z", True, True), ("!", "^", True, True), ("!", "9", False, False), ("a", "z", False, False),
      ("a", "^", False, False), ("a", "9", False, False), ("1", "z", True, True), ("1", "^", True, True),
      ("1", "9", False, False)]),
    (['"some ""quoted""".`identifiers?`'],
     [('some "quoted"', "identifiers?", True, True), ('some "quoted"', "identifiers!", False, False),
      ('some ""quoted""', "identifiers?", False, False), ('SOME "QUOTED"', "IDENTIFIERS?", False, True),
      ('some\t"quoted"', "identifiers?", False, False)]),
    (["db*.*", "!*.cfg*", "*.cfgsample"],
     [("irrelevant", "table", False, False), ("db1", "tbl1", True, True), ("db1", "cfg1", False, False),
      ("db1", "cfgsample", True, True), ("else", "cfgsample", True, True)]),
    (["*.*", "!S.D[!a-d]"],
     [("S", "D1", False, False), ("S", "Da", True, True), ("S", "Db", True, True), ("S", "Daa", True, True)]),
    (["*.*", "!S.D[a-d]"],
     [("S", "D1", True, True), ("S", "Da", False, False), ("S", "Db", False, False), ("S", "Daa", True, True)]),
]

MATCH_SCHEMAS: list[tuple[list[str], list[tuple[str, bool, bool]]]] = [
    (["foo.*"], [("foo", True, True), ("foo1", False, False)]),
    (["foo.bar1"], [("foo", True, True), ("foo1", False, False)]),
    (["*.*", "!foo.bar"], [("foo", True, True), ("foo1", True, True)]),
    (["*.*", "!FOO*.*", "!*.*FoO"],
     [("foo", True, False), ("FOO", False, False), ("foobar", True, False), ("FOOBAR", False, False),
      ("bar", True, True), ("BAR", True, True)]),
]

PARSE_FAILURES = [
    ("/^t[0-9]+((?!_copy).)*$/.*", "error parsing regexp"),
    ("/^t[0-9]+sp(?=copy).*/.*", "error parsing regexp"),
    ("a.b.c", "stray characters after table pattern"),
    ("a%b.c", "unexpected special character '%'"),
    (r"a\tb.c", r"cannot escape a letter or number \(\\t\)"),
    ("[].*", "failed to parse character class"),
    ("[!].*", "error parsing regexp"),
    ("[.*", "failed to parse character class"),
    (r"[\d\D].*", "failed to parse character class"),
    ("db", "wrong table pattern"),
    ("db.", "missing pattern"),
    ("`db`*.*", "missing '.' between schema and table patterns"),
    ("/db.*", "incomplete regexp"),
    ("`db.*", "incomplete quoted identifier"),
    ('"db.*', "incomplete quoted identifier"),
    ("db\\", r"cannot place \\ at end of line"),
    ("db.tbl#not comment", "unexpected special character '#'"),
]


@pytest.mark.parametrize(("rules", "tables"), MATCH_TABLES)
def test_match_tables_as_tidb_does(rules: list[str], tables: list[tuple[str, str, bool, bool]]) -> None:
    cs, ci = TableFilter(rules, case_sensitive=True), TableFilter(rules)
    assert [(s, t, cs.matches(s, t), ci.matches(s, t)) for s, t, _, _ in tables] == tables


@pytest.mark.parametrize(("rules", "schemas"), MATCH_SCHEMAS)
def test_match_schemas_as_tidb_does(rules: list[str], schemas: list[tuple[str, bool, bool]]) -> None:
    cs, ci = TableFilter(rules, case_sensitive=True), TableFilter(rules)
    assert [(s, cs.matches_schema(s), ci.matches_schema(s)) for s, _, _ in schemas] == schemas


@pytest.mark.parametrize(("rule", "message"), PARSE_FAILURES)
def test_parse_failures_as_tidb_reports_them(rule: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError, match=message):
        TableFilter([rule])


# Names a TiDB user can create: `-`, `.`, spaces, quotes, backslashes, wildcard characters, unicode, mixed case,
# reserved words.
AWKWARD = ["Hostile-DB", "my.db", "Space DB", "数据 库", "Order", "select", "MixedCase", "a*b?[c]", "it's",
           'say "hi"', "back`tick", "back\\slash", "$dollar_1", "1st", "emoji😀", "tab\tname", "!bang", "#hash", "trailing\t", "ends "]


def test_production_rules_select_exactly_their_table() -> None:
    """What the changefeed asset sends (backslash escapes) matches its own table and no near miss."""
    assert table_rule(TableConfig(db="Hostile-DB", table="Order")) == "Hostile\\-DB.Order"
    for db in AWKWARD:
        for table in AWKWARD:
            rule = table_rule(TableConfig(db=db, table=table))
            for case_sensitive in (True, False):
                f = TableFilter([rule], case_sensitive=case_sensitive)
                assert f.matches(db, table), rule
                assert not f.matches(db + "x", table) and not f.matches(db, "x" + table), rule
    # A wildcard character in a name is escaped, not a wildcard.
    assert not TableFilter([table_rule(TableConfig(db="a*b?[c]", table="t"))]).matches("aXbYc", "t")
    assert filter_name("数据 库") == "数据\\ 库"


def test_quoted_and_escaped_rules_are_equivalent() -> None:
    for rule in ("Hostile\\-DB.Order", '"Hostile-DB".Order', "`Hostile-DB`.Order", "`Hostile-DB`.`Order`"):
        f = TableFilter([rule])
        assert f.matches("Hostile-DB", "Order") and f.matches("hostile-db", "ORDER"), rule
        assert not TableFilter([rule], case_sensitive=True).matches("hostile-db", "Order"), rule
        assert not f.matches("Hostile_DB", "Order"), rule
    assert TableFilter(["!`Hostile-DB`.*", "*.*"]).matches("Hostile-DB", "t")  # the last matching rule decides
    assert not TableFilter(["*.*", "!`Hostile-DB`.*"]).matches("Hostile-DB", "t")


def test_literal_schemas_for_the_capture_prefilter() -> None:
    assert TableFilter(["`Hostile-DB`.*", "Other.t", "!x.*"]).literal_schemas() == {"hostile-db", "other"}
    assert TableFilter(["`Hostile-DB`.*"], case_sensitive=True).literal_schemas() == {"Hostile-DB"}
    assert TableFilter(["h*.*"]).literal_schemas() is None


def test_lab_api_and_capture_accept_what_production_sends() -> None:
    from tidb_pipeline.lab.ticdc import api, capture

    rules = [table_rule(TableConfig(db="Hostile-DB", table="Order Items")), "`数据 库`.*"]
    replica_config = {"filter": {"rules": rules}, "sink": {"schema_registry": "http://r", "dispatchers": [
        {"matcher": rules, "topic": "tidb_{schema}_{table}", "partition": "index-value"}]}}
    plan = api.plan_sink("kafka://h:1/t?protocol=avro", replica_config)
    assert plan.replicates("Hostile-DB", "Order Items") and plan.replicates("数据 库", "t")
    assert not plan.replicates("Hostile-DB", "Order") and not plan.replicates("mysql", "user")
    # Dispatcher matchers are case-insensitive by default too.
    assert [topic for matcher, topic in plan.dispatchers if matcher.matches("hostile-db", "order items")] == [
        "tidb_{schema}_{table}"]
    sink = capture.parse_sink("kafka://h:1/t?protocol=avro", replica_config)
    assert sink.filter.matches("Hostile-DB", "Order Items") and not sink.filter.matches("Hostile-DB", "Order")
    assert sink.route("Hostile-DB", "Order Items") == capture.Route("tidb_Hostile-DB_Order_Items", "index-value")
    assert sink.route("数据 库", "表") == capture.Route("tidb_" + "____" + "_" + "_", "index-value")
    strict = {**replica_config, "case_sensitive": True}
    assert not api.plan_sink("kafka://h:1/t?protocol=avro", strict).replicates("hostile-db", "Order Items")
    assert not capture.parse_sink("kafka://h:1/t?protocol=avro", strict).filter.matches("hostile-db", "Order Items")
    with pytest.raises(api.ApiError) as err:
        api.plan_sink("kafka://h:1/t?protocol=avro", {"filter": {"rules": ["a%b.c"]}, "sink": {"schema_registry": "r"}})
    assert err.value.code == "CDC:ErrFilterRuleInvalid" and "unexpected special character '%'" in err.value.message
