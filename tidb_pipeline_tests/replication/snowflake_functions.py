"""Snowflake's documented functions that the pipeline may call, each with the page that documents it.

The allowlist of `test_snowflake_functions`: a statement the pipeline sends to Snowflake may only call these.
Add a function only with its page in Snowflake's SQL reference (several functions share one page, e.g. HOUR /
MINUTE / SECOND, or TRY_TO_TIMESTAMP / TRY_TO_TIMESTAMP_NTZ). Not here on purpose: LOG10 (Snowflake has
LOG(base, x) only), TO_NUMBER with a hex format, HASH/HASH_AGG (values differ from MySQL's).
"""

from __future__ import annotations

DOCS = "https://docs.snowflake.com/en/sql-reference/functions/"

# Function -> its documentation page (the page's name, under DOCS).
_PAGES = {
    "ABS": "abs",
    "BASE64_DECODE_BINARY": "base64_decode_binary",
    "CAST": "cast",
    "CHR": "chr",
    "COALESCE": "coalesce",
    "CONCAT": "concat",
    "CONTAINS": "contains",
    "COUNT": "count",
    "COUNT_IF": "count_if",
    "DATEDIFF": "datediff",
    "DATE_TRUNC": "date_trunc",
    "FLOOR": "floor",
    "GREATEST": "greatest",
    "HEX_ENCODE": "hex_encode",
    "HOUR": "hour-minute-second",
    "IFF": "iff",
    "IS_NULL_VALUE": "is_null_value",
    "LAG": "lag",
    "LAST_VALUE": "last_value",
    "LEAD": "lead",
    "LENGTH": "length",
    "LEAST": "least",
    "LOG": "log",
    "LPAD": "lpad",
    "MAX": "max",
    "MD5": "md5",
    "MIN": "min",
    "MINUTE": "hour-minute-second",
    "MOD": "mod",
    "OBJECT_CONSTRUCT": "object_construct",
    "PARSE_JSON": "parse_json",
    "POSITION": "position",
    "POWER": "pow",
    "REPEAT": "repeat",
    "REPLACE": "replace",
    "RIGHT": "right",
    "ROW_NUMBER": "row_number",
    "SECOND": "hour-minute-second",
    "SHA2": "sha2",  # the column policy's hash (SHA2(salt || text, 256): hex VARCHAR)
    "STARTSWITH": "startswith",
    "STRIP_NULL_VALUE": "strip_null_value",
    "SUBSTR": "substr",
    "SUM": "sum",
    "TO_BINARY": "to_binary",
    "TO_CHAR": "to_char",
    "TO_JSON": "to_json",
    "TO_TIMESTAMP_NTZ": "to_timestamp",
    "TRY_PARSE_JSON": "try_parse_json",
    "TRY_TO_DATE": "try_to_date",
    "TRY_TO_TIMESTAMP_NTZ": "try_to_timestamp",
}


def doc_url(name: str) -> str:
    """The documentation page of an allowed function."""
    return DOCS + _PAGES[name]


SNOWFLAKE_FUNCTIONS: dict[str, str] = {name: doc_url(name) for name in _PAGES}
