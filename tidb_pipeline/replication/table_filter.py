"""TiDB's table-filter syntax, as TiCDC reads changefeed filter rules and dispatcher matchers.

Rebuilt from pingcap/tidb `pkg/util/table-filter` (`parser.go`, `matchers.go`, `table_filter.go`), which
tiflow's `pkg/filter` and dispatcher `event_router.go` call (`filter.Parse`, then `CaseInsensitive` unless the
changefeed sets `case_sensitive`). A rule is `schema.table`, each side one of:

- a wildcard pattern: `*` (any run), `?` (one character), `[a-z]` / `[!a-z]` (a class; `[^` is literal `^`),
  literal letters, digits, `$`, `_` and any non-ASCII character; every other ASCII character is reserved
  and must be escaped with `\\` (`Hostile\\-DB`); escaping a letter or digit is an error;
- a quoted name, `"..."` (`""` inside) or `` `...` `` (` `` ` inside), matched literally;
- a regular expression `/.../` (RE2 syntax upstream; here Python's `re`, refusing lookarounds and
  back-references, which RE2 does not have).

`!` in front negates; `#` starts a comment line; blank lines are ignored; the rule list's last matching
rule decides, and no match means "not replicated". `@file` imports are not supported over the API.

Pure: the lab change feed matches changefeed filters and dispatchers with it, and the pipeline's
`changefeed_tables` check (`defs/changefeed_checks.py`) asks it which TiDB tables a running changefeed replicates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_REGEXP = re.compile(r"/((?:\\.|[^/])+)/")
_DOUBLE_QUOTED = re.compile(r'"((?:""|[^"])+)"')
_BACKQUOTED = re.compile(r"`((?:``|[^`])+)`")
_RANGE = re.compile(r"\[!?(?:\\[^0-9a-zA-Z]|[^\\\]])+\]")
# What RE2 (Go's regexp) refuses and Python's `re` would accept: lookarounds, back-references, atomic groups.
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|>|P=)|\\[1-9]")


class FilterSyntaxError(ValueError):
    """A rule TiDB's table-filter parser refuses; the message says what and where, as upstream does."""


def _ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


@dataclass(frozen=True)
class Matcher:
    """One side of a rule: a literal name, a compiled pattern, or `*` (everything)."""

    literal: str | None = None
    pattern: re.Pattern[str] | None = None

    def match(self, name: str) -> bool:
        if self.literal is not None:
            return name == self.literal
        # Go's MatchString searches: a wildcard is anchored by its own ^...\Z, a `/regexp/` only if it says so.
        return self.pattern is None or self.pattern.search(name) is not None

    @property
    def matches_all(self) -> bool:
        return self.literal is None and self.pattern is None

    def lowered(self) -> Matcher:
        if self.literal is not None:
            return Matcher(literal=self.literal.lower())
        if self.pattern is not None:
            return Matcher(pattern=re.compile(self.pattern.pattern, self.pattern.flags | re.IGNORECASE))
        return self


@dataclass(frozen=True)
class Rule:
    positive: bool
    schema: Matcher
    table: Matcher


def _regexp(source: str, rule: str, *, user: bool = True) -> Matcher:
    if user and _NOT_RE2.search(source):
        raise FilterSyntaxError(f"invalid pattern in {rule!r}: error parsing regexp: {source!r} uses a construct "
                                "RE2 does not support (lookaround, back-reference or atomic group)")
    try:
        return Matcher(pattern=re.compile(source, re.DOTALL))
    except re.error as exc:
        raise FilterSyntaxError(f"invalid pattern in {rule!r}: error parsing regexp: {exc}") from None


def _wildcard(text: str, rule: str) -> tuple[Matcher, str]:
    literal: list[str] = []
    pattern: list[str] = []
    is_literal = True
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i == len(text) - 1:
                raise FilterSyntaxError(f"syntax error in {rule!r}: cannot place \\ at end of line")
            esc = text[i + 1]
            if _ascii_alnum(esc):
                raise FilterSyntaxError(
                    f"{rule!r}: cannot escape a letter or number (\\{esc}), it is reserved for future extension")
            literal.append(esc)
            pattern.append(re.escape(esc))
            i += 2
        elif c == ".":
            break  # the schema / table separator
        elif c == "*":
            is_literal = False
            pattern.append(".*")
            i += 1
        elif c == "?":
            is_literal = False
            pattern.append(".")
            i += 1
        elif c == "[":
            is_literal = False
            m = _RANGE.match(text, i)
            if m is None:
                raise FilterSyntaxError(f"syntax error in {rule!r}: failed to parse character class")
            body = text[i + 1 : m.end()]
            if body.startswith("!"):
                pattern.append("[^" + body[1:])
            elif body.startswith("^"):  # `[^` is not special in a glob: a literal caret
                pattern.append("[\\^" + body[1:])
            else:
                pattern.append("[" + body)
            i = m.end()
        else:
            if not (c in "$_" or _ascii_alnum(c) or not c.isascii()):
                raise FilterSyntaxError(f"{rule!r}: unexpected special character {c!r}; escape it with \\ "
                                        "or quote the name")
            literal.append(c)
            pattern.append(re.escape(c))
            i += 1
    rest = text[i:]
    if is_literal:
        return Matcher(literal="".join(literal)), rest
    body = "".join(pattern)
    if body == ".*":
        return Matcher(), rest  # `*`: matches everything (upstream's trueMatcher)
    return _regexp("^" + body + "\\Z", rule, user=False), rest


def _pattern(text: str, rule: str) -> tuple[Matcher, str]:
    if not text:
        raise FilterSyntaxError(f"syntax error in {rule!r}: missing pattern")
    if text[0] == "/":
        m = _REGEXP.match(text)
        if m is None:
            raise FilterSyntaxError(f"syntax error in {rule!r}: incomplete regexp")
        return _regexp(m.group(1), rule), text[m.end():]
    for quote, quoted in (('"', _DOUBLE_QUOTED), ("`", _BACKQUOTED)):
        if text[0] == quote:
            m = quoted.match(text)
            if m is None:
                raise FilterSyntaxError(f"syntax error in {rule!r}: incomplete quoted identifier")
            return Matcher(literal=m.group(1).replace(quote * 2, quote)), text[m.end():]
    return _wildcard(text, rule)


def parse_rule(rule: str) -> Rule | None:
    """One rule; None for a blank or comment line."""
    line = rule.strip(" \t")
    if not line or line[0] == "#":
        return None
    positive = True
    if line[0] == "!":
        positive, line = False, line[1:]
    elif line[0] == "@":
        raise FilterSyntaxError(f"{rule!r}: importing a filter file (@file) is not supported over the API; "
                                "list the rules themselves")
    schema, line = _pattern(line, rule)
    if not line:
        raise FilterSyntaxError(f"{rule!r}: wrong table pattern (write schema.table, e.g. 'tpcc.*')")
    if line[0] != ".":
        raise FilterSyntaxError(f"syntax error in {rule!r}: missing '.' between schema and table patterns")
    table, line = _pattern(line[1:], rule)
    if line:
        raise FilterSyntaxError(f"syntax error in {rule!r}: stray characters after table pattern")
    return Rule(positive, schema, table)


class TableFilter:
    """A parsed rule list: `matches(schema, table)` is TiDB's MatchTable (the last matching rule decides)."""

    def __init__(self, rules: Sequence[str], *, case_sensitive: bool = False) -> None:
        for rule in rules:
            if not isinstance(rule, str):
                raise FilterSyntaxError(f"filter rule {rule!r} is not a string")
        parsed = [r for r in (parse_rule(rule) for rule in rules) if r is not None]
        if not case_sensitive:
            parsed = [Rule(r.positive, r.schema.lowered(), r.table.lowered()) for r in parsed]
        self.case_sensitive = case_sensitive
        self._rules = tuple(reversed(parsed))

    def _names(self, *names: str) -> tuple[str, ...]:
        return names if self.case_sensitive else tuple(n.lower() for n in names)

    def matches(self, schema: str, table: str) -> bool:
        schema, table = self._names(schema, table)
        for rule in self._rules:
            if rule.schema.match(schema) and rule.table.match(table):
                return rule.positive
        return False

    def matches_schema(self, schema: str) -> bool:
        """TiDB's MatchSchema: could any table of `schema` be replicated?"""
        (schema,) = self._names(schema)
        for rule in self._rules:
            if rule.schema.match(schema) and (rule.positive or rule.table.matches_all):
                return rule.positive
        return False

    def literal_schemas(self) -> set[str] | None:
        """The schema names positive rules name literally (lower-cased unless case-sensitive); None when a
        positive rule's schema is a pattern, so any schema may hold a matching table."""
        names: set[str] = set()
        for rule in self._rules:
            if not rule.positive:
                continue
            if rule.schema.literal is None:
                return None
            names.add(rule.schema.literal)
        return names
