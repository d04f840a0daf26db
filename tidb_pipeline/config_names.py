"""The naming rules of the config: which Snowflake, Kafka and Dagster names are valid, and the names TiCDC and
the Snowflake Sink derive from TiDB's (`config.py` validates and derives with them).
"""

from __future__ import annotations

import re

_TOPIC_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")
_KAFKA_TOPIC_MAX = 249
_CONNECTOR_TABLE_OK = re.compile(r"^[_a-zA-Z][_$a-zA-Z0-9]+$")
# Snowflake's reserved keywords (docs.snowflake.com/en/sql-reference/reserved-keywords): not usable unquoted.
_RESERVED = frozenset("""
ALL ALTER AND ANY AS BETWEEN BY CASE CAST CHECK COLUMN CONNECT CONSTRAINT CREATE CROSS CURRENT CURRENT_DATE
CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER DELETE DISTINCT DROP ELSE EXISTS FALSE FOLLOWING FOR FROM FULL GRANT
GROUP GSCLUSTER HAVING ILIKE IN INCREMENT INNER INSERT INTERSECT INTO IS ISSUE JOIN LATERAL LEFT LIKE LOCALTIME
LOCALTIMESTAMP MINUS NATURAL NOT NULL OF ON OR ORDER ORGANIZATION QUALIFY REGEXP REVOKE RIGHT RLIKE ROW ROWS
SAMPLE SCHEMA SELECT SET SOME START TABLE TABLESAMPLE THEN TO TRIGGER TRUE TRY_CAST UNION UNIQUE UPDATE USING
VALUES VIEW WHEN WHENEVER WHERE WINDOW WITH""".split())
# An unquoted Snowflake identifier: what the Snowflake Sink creates (upper-cased) and what a user types.
_UNQUOTED_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _unquoted_identifier(value: str) -> str:
    """An unquoted Snowflake identifier, upper-cased as Snowflake (and the Snowflake Sink) resolve it."""
    if not _UNQUOTED_IDENT.match(value):
        raise ValueError(f"{value!r} is not an unquoted Snowflake identifier (^[A-Za-z_][A-Za-z0-9_$]*$): the "
                         "Snowflake Sink creates unquoted, upper-cased names; use letters, digits, '_' and '$'")
    if value.upper() in _RESERVED:
        raise ValueError(f"{value!r} is a Snowflake reserved keyword, so not usable as an unquoted Snowflake identifier "
                         f"(the Snowflake Sink creates its names unquoted); choose another, e.g. {value.upper() + '_1'!r}")
    return value.upper()


def _keyable_identifier(value: str) -> str:
    """An unquoted Snowflake identifier that is also the last part of a Dagster asset key
    (`snowflake/<schema>/<name>`), which allows only [A-Za-z0-9_]; upper-cased as Snowflake resolves it."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r} may hold only letters, digits and '_' and not start with a digit: it must be an "
                         "unquoted Snowflake identifier (the Snowflake Sink creates unquoted, upper-cased names) and "
                         f"it names the Dagster asset snowflake/<schema>/<name> too; use e.g. {_plain_name(value)!r}")
    return _unquoted_identifier(value)  # reserved keywords are refused there


def _env_name(value: str | None) -> str | None:
    # The value is not echoed: a secret pasted here by mistake must not reach an error message.
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError("is not an environment variable name (upper-case letters, digits and '_'); name the "
                         "variable that holds the secret, never the secret itself")
    return value


def _dagster_name(group: str) -> str:
    # A group names Dagster jobs, schedules and asset groups (`merge_<group>`), which allow only these.
    if not re.fullmatch(r"[A-Za-z0-9_]+", group):
        raise ValueError(f"group {group!r} may hold only letters, digits and '_' (it names the Dagster job "
                         f"merge_<group>); use e.g. {re.sub(r'[^A-Za-z0-9_]', '_', group) or 'default'!r}")
    return group


def topic_name(pattern: str, schema: str, table: str) -> str:
    """TiCDC's topic for `schema.table` (tiflow `topic.Expression.Substitute`).

    Characters outside `[A-Za-z0-9._-]` in the names become `_` (one per character: `数据` -> `__`), the
    result is cut at Kafka's 249 characters, and `.` / `..` (invalid topics) become `_` / `__`.
    """
    name = pattern.replace("{schema}", _TOPIC_ILLEGAL.sub("_", schema)).replace(
        "{table}", _TOPIC_ILLEGAL.sub("_", table))
    if len(name) > _KAFKA_TOPIC_MAX:
        return name[:_KAFKA_TOPIC_MAX]
    return {".": "_", "..": "__"}.get(name, name)


def replica_table_name(table: str) -> str:
    """The default replica name of TiDB table `table`: upper-cased when it is a plain identifier
    (`order_line` -> `ORDER_LINE`, `select` -> `SELECT`); otherwise named the way the Snowflake Sink names a
    topic that is not one: every character outside `[A-Za-z0-9_]` as `_`, a `_` in front of a digit, then `_`
    and the absolute Java hashCode of the name, upper-cased (`Order Items` -> `ORDER_ITEMS_1798703150`), so
    names that differ only in those characters stay apart. Dagster asset keys (`snowflake/<schema>/<name>`)
    allow nothing else; set `replica_table` for a friendlier name.
    """
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
        return table.upper()
    return f"{_plain_name(table)}_{abs(_java_hash(table))}"


def _plain_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
    return cleaned if re.match(r"[A-Z_]", cleaned) else "_" + cleaned


def connector_table_name(topic: str) -> str:
    """The table the Snowflake Sink creates for `topic` without a topic2table entry (its `Utils` naming rule).

    A topic matching `^[_a-zA-Z][_$a-zA-Z0-9]+$` is used as is, which Snowflake upper-cases (connector 3.x
    uses it unquoted; 4.x upper-cases it itself). Any other: `.*` removed, a `_` in front unless it starts
    with `[_a-zA-Z]`, every UTF-16 code unit outside `[_$a-zA-Z0-9]` replaced by `_`, then `_` and Java's
    `Math.abs(topic.hashCode())` of the original topic appended, upper-cased the same way.
    """
    if _CONNECTOR_TABLE_OK.fullmatch(topic):
        return topic.upper()
    suffix = _java_abs(_java_hash(topic))
    units: list[str] = []
    for ch in topic.replace(".*", ""):
        # Java walks UTF-16 code units: a character beyond the BMP is two, each replaced.
        units += [ch] if ord(ch) < 0x10000 else ["\0", "\0"]
    out = [] if units and re.fullmatch(r"[_a-zA-Z]", units[0]) else ["_"]
    out += [u if re.fullmatch(r"[_$a-zA-Z0-9]", u) else "_" for u in units]
    return f"{''.join(out)}_{suffix}".upper()


def _java_hash(s: str) -> int:
    """Java's `String.hashCode()`: a signed 32-bit int over UTF-16 code units."""
    units = s.encode("utf-16-be", "surrogatepass")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _java_abs(n: int) -> int:
    # Java's Math.abs on an int: Integer.MIN_VALUE has no positive counterpart and stays negative.
    return n if n == -(1 << 31) else abs(n)
