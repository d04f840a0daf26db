"""The validated project config: which TiDB tables to replicate, where to, and how.

The table list is a checked-in YAML file (`tidb_pipeline.yaml` at the repo root, or `$TIDB_PIPELINE_CONFIG`),
written by hand or by `tidb-pipeline discover`. It holds no secrets: connection settings and credentials
come from environment variables (`dg.EnvVar`) in the resources. Loading it touches no network, and any
mistake fails at load with the offending field named (`tables.3.table: field required`).
"""

from __future__ import annotations

import os
import re
import zoneinfo
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tidb_pipeline.config_names import _dagster_name, _env_name, _keyable_identifier, _unquoted_identifier
from tidb_pipeline.config_names import connector_table_name, replica_table_name, topic_name

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "tidb_pipeline.yaml"

# Decimal digits a double holds exactly: a wider DECIMAL loses digits as a JSON number in Snowflake.
DOUBLE_EXACT_DIGITS = 15
# Five-field cron, the only form Dagster schedules accept.
_CRON = re.compile(r"^\S+\s+\S+\s+\S+\s+\S+\s+\S+$")
# Snowflake date/time format elements and separators only: no quote can reach the ALTER SESSION literal.
_FORMAT_TEXT = re.compile(r"^[A-Za-z0-9 :.,/_-]+$")
_TIMEZONE_TEXT = re.compile(r"^[A-Za-z0-9_+/-]+$")


class ConfigError(ValueError):
    """The config file is invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Model):
    """The TiDB side: which changefeed feeds the topics."""

    changefeed_id: str = "tidb-pipeline"
    topic_pattern: str = "tidb_{schema}_{table}"
    partitions: int = Field(default=3, ge=1, le=1024)
    enable_tidb_extension: bool = True
    # TiCDC's Avro options; the replica's types depend on them. Unset, decimals are `precise` (typed
    # NUMBER(p,s) replica columns) unless a table is in connector landing mode: the Snowflake Sink writes an
    # Avro decimal as a JSON number, which Snowflake stores as a double, so there the project sends `string`
    # (exact digits in VARCHAR replica columns); read it as `PipelineConfig.decimal_handling`.
    decimal_handling: Literal["precise", "string"] | None = None
    bigint_unsigned_handling: Literal["long", "string"] = "long"

    @field_validator("changefeed_id")
    @classmethod
    def _changefeed_id(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*", value):
            raise ValueError("must match ^[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*$ (TiCDC's rule for changefeed ids)")
        return value

    @field_validator("topic_pattern")
    @classmethod
    def _topic_pattern(cls, value: str) -> str:
        # With Avro each topic must hold one table, so TiCDC requires both placeholders.
        if "{schema}" not in value or "{table}" not in value:
            raise ValueError("must contain both {schema} and {table} (Avro needs one table per topic)")
        return value


class SnowflakeSessionConfig(_Model):
    """Session parameters every warehouse session sets first (`ALTER SESSION SET`), so that neither an account's
    defaults nor a user's change what a load, merge or check does."""

    # Seconds a statement waits for a lock (a load waits for another load of its table, a merge for a
    # merge); Snowflake's default of 12 hours would hang a run behind a stuck transaction.
    lock_timeout_s: int = Field(default=600, ge=0, le=604_800)
    # Seconds any one statement may run; Snowflake's default is 2 days.
    statement_timeout_s: int = Field(default=3600, ge=1, le=604_800)
    # Replicas hold TIMESTAMP_NTZ values as TiCDC wrote them; CURRENT_TIMESTAMP and conversions use this zone.
    timezone: str = "UTC"
    # Output formats of the types the checksums and the replicas' text forms read.
    timestamp_ntz_output_format: str = "YYYY-MM-DD HH24:MI:SS.FF6"
    date_output_format: str = "YYYY-MM-DD"
    time_output_format: str = "HH24:MI:SS.FF6"

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            if not _TIMEZONE_TEXT.match(value):
                raise ValueError
            zoneinfo.ZoneInfo(value)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise ValueError(f"{value!r} is not an IANA time zone name such as 'UTC' or 'Europe/Berlin'") from None
        return value

    @field_validator("timestamp_ntz_output_format", "date_output_format", "time_output_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if not _FORMAT_TEXT.match(value):
            raise ValueError(f"{value!r} is not a Snowflake date/time format such as 'YYYY-MM-DD HH24:MI:SS.FF6' "
                             "(letters, digits, spaces and - : . , / _ only)")
        return value

    def parameters(self) -> dict[str, int | str]:
        """Snowflake's parameter names and values, in the order they are set."""
        return {
            "LOCK_TIMEOUT": self.lock_timeout_s,
            "STATEMENT_TIMEOUT_IN_SECONDS": self.statement_timeout_s,
            "TIMEZONE": self.timezone,
            "TIMESTAMP_NTZ_OUTPUT_FORMAT": self.timestamp_ntz_output_format,
            "DATE_OUTPUT_FORMAT": self.date_output_format,
            "TIME_OUTPUT_FORMAT": self.time_output_format,
        }


class SnowflakeConfig(_Model):
    """Where the replicas live. Names are unquoted Snowflake identifiers (upper-cased, as Snowflake resolves
    them), so the Snowflake Sink, a user's query and the pipeline all mean the same objects."""

    database: str = "TIDB_REPLICA"
    landing_schema: str = "LANDING"
    replica_schema: str = "REPLICA"
    # Holds merge watermarks and the dead-letter table.
    control_schema: str = "PIPELINE"
    session: SnowflakeSessionConfig = SnowflakeSessionConfig()

    @field_validator("database", "landing_schema", "replica_schema", "control_schema")
    @classmethod
    def _name(cls, value: str) -> str:
        return _unquoted_identifier(value)


class ScheduleConfig(_Model):
    cron: str
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not _CRON.match(value.strip()):
            raise ValueError(f"{value!r} is not a five-field cron expression such as '* * * * *'")
        return value.strip()


class FreshnessConfig(_Model):
    """How stale a replica may get while records wait, before it warns and then fails.

    One limit feeds both the replica's Dagster `FreshnessPolicy` (the UI's freshness status) and the
    `replica_freshness` asset check, so the two always agree.
    """

    warn_after_minutes: float = Field(default=10.0, ge=1)
    fail_after_minutes: float = Field(default=60.0, ge=1)

    @model_validator(mode="after")
    def _order(self) -> FreshnessConfig:
        if self.warn_after_minutes >= self.fail_after_minutes:
            raise ValueError(f"warn_after_minutes ({self.warn_after_minutes:g}) must be below fail_after_minutes "
                             f"({self.fail_after_minutes:g})")
        return self


class SlackAlerts(_Model):
    """Slack through `dagster-slack` (a bot token with `chat:write`, invited to the channel)."""

    channel: str = Field(min_length=1)
    token_env: str = "SLACK_BOT_TOKEN"
    # Only to reach something other than Slack's Web API (a test receiver, a proxy).
    api_url: str = "https://slack.com/api/"

    _check_env = field_validator("token_env")(_env_name)


class TeamsAlerts(_Model):
    """Microsoft Teams through `dagster-msteams`: an incoming-webhook / Workflows URL (it embeds a secret)."""

    webhook_url_env: str = "TEAMS_WEBHOOK_URL"

    _check_env = field_validator("webhook_url_env")(_env_name)


class EmailAlerts(_Model):
    """Email over SMTP; the account's credentials come from the environment."""

    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    # "starttls" (port 587), "ssl" (implicit TLS, port 465) or "none" (a local relay).
    security: Literal["starttls", "ssl", "none"] = "starttls"
    sender: str = Field(min_length=3)
    recipients: tuple[str, ...] = Field(min_length=1)
    username_env: str | None = "SMTP_USERNAME"
    password_env: str | None = "SMTP_PASSWORD"
    timeout_s: float = Field(default=30.0, gt=0)

    _check_env = field_validator("username_env", "password_env")(_env_name)

    @field_validator("sender", "recipients")
    @classmethod
    def _addresses(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for address in (value,) if isinstance(value, str) else value:
            if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
                raise ValueError(f"{address!r} is not an email address (name@domain)")
        return value


class WebhookAlerts(_Model):
    """A generic webhook: each notification is POSTed as JSON to the URL in `url_env`."""

    url_env: str = "ALERT_WEBHOOK_URL"

    _check_env = field_validator("url_env")(_env_name)


class AlertsConfig(_Model):
    """Where state changes (checks, runs, changefeed, freshness) are sent; no destination, no alerts."""

    # The Dagster UI's address as people reach it; every message links to the asset or run there.
    ui_url: str = "http://localhost:3000"
    interval_seconds: int = Field(default=30, ge=5, le=3600)
    slack: SlackAlerts | None = None
    teams: TeamsAlerts | None = None
    email: EmailAlerts | None = None
    webhook: WebhookAlerts | None = None

    @field_validator("ui_url")
    @classmethod
    def _ui_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http(s) URL such as https://dagster.example.com")
        return value.rstrip("/")

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(n for n in ("slack", "teams", "email", "webhook") if getattr(self, n) is not None)


class RetryConfig(_Model):
    """Retries of the land-and-merge step after a retryable error (broker, registry or warehouse unavailable).

    Deterministic errors (bad config, bad data, a failed consistency check) fail at once.
    """

    max_retries: int = Field(default=4, ge=0, le=20)
    delay_seconds: float = Field(default=15.0, ge=0)


class SchemaChangePolicy(_Model):
    """What a replica does when its TiDB table changes (README "Schema changes"); defaults in brackets.

    - add_column [follow]: add the column (`ALTER TABLE ... ADD COLUMN`); `fail` stops the merge instead.
    - drop_column [keep]: keep the column and stop filling it; `drop`: drop it `drop_after_hours` [168]
      after the drop was first seen (0 = at once).
    - widen_type [alter]: `ALTER COLUMN ... SET DATA TYPE` where Snowflake allows it in place (a longer
      VARCHAR, a NUMBER with more precision and the same scale); `fail` stops the merge instead.
    - incompatible_type [fail]: a narrower type, another scale, another type: the merge stops with a message
      naming table, column, old and new type and the rebuild to run (only `fail` exists: the replica's data
      cannot be retyped in place, and a rebuild is a backfill the operator starts).
    - rename_column [follow]: rename the replica column as TiDB's DDL history says (never guessed from the
      Avro schema); `fail` stops the merge instead.
    - truncate [follow]: a TRUNCATE TABLE in TiDB's DDL history empties the replica at the truncate's TSO
      (needs `source.enable_tidb_extension`); `ignore` leaves the rows (the row-count check then fails).
    """

    add_column: Literal["follow", "fail"] = "follow"
    drop_column: Literal["keep", "drop"] = "keep"
    drop_after_hours: float = Field(default=168.0, ge=0)
    widen_type: Literal["alter", "fail"] = "alter"
    incompatible_type: Literal["fail"] = "fail"
    rename_column: Literal["follow", "fail"] = "follow"
    truncate: Literal["follow", "ignore"] = "follow"


class ColumnsConfig(_Model):
    """Which columns a replica holds and how (`replication.columns`): `include` (only these) or `exclude` (all but
    these), and per column `hash` (hex SHA-256 of the salt and the value's text) or `mask` (always NULL).

    Names are TiDB's column names; whether they exist is known only from the table's schema, so an unknown name
    fails the first merge, backfill or check naming the table and the column. Key columns cannot be excluded,
    hashed or masked (the merge, the checks and the SQL Server copy find rows by them): refused there too.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hash: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> ColumnsConfig:
        if self.include and self.exclude:
            raise ValueError("include and exclude: give one of them (include lists the columns kept, exclude the "
                             "columns left out)")
        for field in ("include", "exclude", "hash", "mask"):
            names = getattr(self, field)
            if dupes := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"{field}: {', '.join(map(repr, dupes))} listed twice")
            if any(not n for n in names):
                raise ValueError(f"{field}: empty column name")
        if both := sorted(set(self.hash) & set(self.mask)):
            raise ValueError(f"hash and mask: {', '.join(map(repr, both))} in both; a column is hashed or masked")
        for field in ("hash", "mask"):
            if dropped := sorted(n for n in getattr(self, field) if n in self.exclude or
                                 (self.include and n not in self.include)):
                raise ValueError(f"{field}: {', '.join(map(repr, dropped))} not kept by include/exclude, so "
                                 "there is nothing to " + field)
        return self

    @property
    def is_default(self) -> bool:
        return not (self.include or self.exclude or self.hash or self.mask)


class TableConfig(_Model):
    """One replicated TiDB table."""

    db: str = Field(min_length=1)
    table: str = Field(min_length=1)
    # Primary key (or NOT NULL unique key) columns in order; `discover` fills them in.
    key: tuple[str, ...] = ()
    # Tables in one group share a merge schedule.
    group: str = "default"
    landing_mode: Literal["builtin", "connector"] | None = None
    # Overrides of the derived Snowflake names: unquoted identifiers, upper-cased (see SnowflakeConfig).
    landing_table: str | None = None
    replica_table: str | None = None
    # Overrides the file's `freshness` for this table's replica.
    freshness: FreshnessConfig | None = None
    # Overrides the file's `schema_changes` for this table.
    schema_changes: SchemaChangePolicy | None = None
    # What the replica keeps (README "Replica modes"): the current rows (`replica`), deleted rows flagged
    # (`soft_delete`), or every version (`history`). Changing it on a live table: run the `switch_mode` job.
    mode: Literal["replica", "soft_delete", "history"] = "replica"
    # Column policy (ColumnsConfig); `hash_salt_env` names the environment variable holding the salt of
    # hashed columns (resolved only by the run that hashes, like a dg.EnvVar; never the salt itself).
    columns: ColumnsConfig = ColumnsConfig()
    hash_salt_env: str | None = None

    _check_salt_env = field_validator("hash_salt_env")(_env_name)

    @property
    def column_policy(self) -> ColumnsConfig | None:
        """The column policy (`replication.columns`), None when every column is kept as it is."""
        return None if self.columns.is_default else self.columns

    @model_validator(mode="after")
    def _columns(self) -> TableConfig:
        if self.columns.hash and not self.hash_salt_env:
            raise ValueError("hash_salt_env: columns.hash needs the name of the environment variable holding the "
                             "salt (e.g. hash_salt_env: TIDB_PIPELINE_HASH_SALT)")
        if keyed := [k for k in self.key if k in self.columns.exclude or k in self.columns.hash
                     or k in self.columns.mask or (self.columns.include and k not in self.columns.include)]:
            raise ValueError(f"columns: key column(s) {', '.join(map(repr, keyed))} must be kept as they are (the "
                             "merge, checks and SQL Server copy find rows by the key): do not exclude, hash or mask them")
        return self

    @field_validator("landing_table", "replica_table")
    @classmethod
    def _snowflake_name(cls, value: str | None) -> str | None:
        return None if value is None else _keyable_identifier(value)

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        return _dagster_name(value)


_CONNECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SqlServerConfig(_Model):
    """The SQL Server copy of every table: off unless enabled.

    `builtin`: the project's own applier upserts each topic into a table named after it. `connector`: the
    Confluent Microsoft SQL Server Sink does (`connectors.sqlserver_sink_name`), and Dagster reconciles it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    enabled: bool = False
    mode: Literal["builtin", "connector"] = "builtin"
    database: str = Field(default="tidb_replica", min_length=1)
    # "schema" in the file; the attribute name avoids shadowing BaseModel.schema.
    db_schema: str | None = Field(default=None, alias="schema", min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SqlServerConfig:
        if self.mode == "connector" and self.db_schema is not None:
            raise ValueError("schema: the SQL Server Sink writes into its login's default schema; leave schema unset "
                             "with mode: connector and set the login's default schema in SQL Server instead")
        return self


class KsqlDbConfig(_Model):
    """One ksqlDB stream per table's topic: off unless enabled."""

    enabled: bool = False


class ConnectorsConfig(_Model):
    """Names and tuning of the Confluent connectors Dagster reconciles (credentials come from the resources)."""

    snowflake_sink_name: str = "tidb-pipeline-snowflake-sink"
    sqlserver_sink_name: str = "tidb-pipeline-sqlserver-sink"
    # Streaming is exactly-once and in order per partition (needs SNOWFLAKE_ROLE); SNOWPIPE loads files in any
    # order, which the merge's hole rule keeps correct (`replication.holes`).
    snowflake_ingestion_method: Literal["SNOWPIPE", "SNOWPIPE_STREAMING"] = "SNOWPIPE_STREAMING"
    buffer_flush_time_s: int = Field(default=120, ge=1)
    buffer_count_records: int = Field(default=10_000, ge=1)
    buffer_size_bytes: int = Field(default=20_000_000, ge=1)
    tasks_max: int = Field(default=1, ge=1, le=1024)
    # The Snowflake Sink's consumer group, whose committed offsets say what it has landed: `connect-<name>` on
    # a self-managed worker; on Confluent Cloud `connect-<connector id>` (`connect-lcc-...`).
    snowflake_sink_consumer_group: str | None = Field(default=None, min_length=1)

    @property
    def snowflake_sink_group(self) -> str:
        return self.snowflake_sink_consumer_group or f"connect-{self.snowflake_sink_name}"

    @field_validator("snowflake_sink_name", "sqlserver_sink_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CONNECTOR_NAME.match(value):
            raise ValueError(f"{value!r} is not a usable connector name: use letters, digits, '.', '_' and '-' "
                             "(at most 64 characters, starting with a letter or digit)")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ConnectorsConfig:
        if self.snowflake_sink_name == self.sqlserver_sink_name:
            raise ValueError(f"sqlserver_sink_name: {self.sqlserver_sink_name!r} is also the Snowflake Sink's name; "
                             "two connectors cannot share a name")
        return self


class PipelineConfig(_Model):
    """The whole config file."""

    source: SourceConfig = SourceConfig()
    snowflake: SnowflakeConfig = SnowflakeConfig()
    sqlserver: SqlServerConfig = SqlServerConfig()
    ksqldb: KsqlDbConfig = KsqlDbConfig()
    connectors: ConnectorsConfig = ConnectorsConfig()
    landing_mode: Literal["builtin", "connector"] = "builtin"
    merge_schedules: dict[str, ScheduleConfig] = {"default": ScheduleConfig(cron="* * * * *")}
    cleanup_schedule: ScheduleConfig = ScheduleConfig(cron="0 */2 * * *")
    reconcile_schedule: ScheduleConfig = ScheduleConfig(cron="0 * * * *")
    retention_hours: float = Field(default=24.0, ge=0)
    # How long a hole in a landing table's offsets may hold a merge back before `landing_continuity` is
    # ERROR: longer than the connector takes to flush and Snowpipe to load a file (`buffer_flush_time_s`).
    hole_grace_seconds: float = Field(default=300.0, ge=0)
    # The offsets sensor's minimum interval: a commit waits up to this long before a merge run is even
    # requested. Dagster's sensor daemon evaluates sensors at most every 5 s, so lower values buy nothing.
    sensor_interval_seconds: int = Field(default=15, ge=5, le=3600)
    freshness: FreshnessConfig = FreshnessConfig()
    schema_changes: SchemaChangePolicy = SchemaChangePolicy()
    alerts: AlertsConfig = AlertsConfig()
    retries: RetryConfig = RetryConfig()
    tables: tuple[TableConfig, ...] = ()

    @field_validator("merge_schedules")
    @classmethod
    def _schedule_groups(cls, value: dict[str, ScheduleConfig]) -> dict[str, ScheduleConfig]:
        for group in value:
            _dagster_name(group)
        return value

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        seen: set[tuple[str, str]] = set()
        # Names two tables must not share: TiCDC replaces characters outside [A-Za-z0-9._-] in topics (`数据`
        # and `资料` are both `__`), and replica names drop the database.
        owners: dict[tuple[str, str], int] = {}
        for i, t in enumerate(self.tables):
            if (t.db, t.table) in seen:
                raise ValueError(f"tables.{i}: {t.db}.{t.table} is listed twice")
            seen.add((t.db, t.table))
            for what, name, fix in (
                ("topic", self.topic(t), "TiCDC would write both to it; change source.topic_pattern or replicate one"),
                ("landing table", self.landing_table(t), "set landing_table on one of them"),
                ("replica table", self.replica_table(t), "set replica_table on one of them"),
            ):
                j = owners.setdefault((what, name), i)
                if j != i:
                    other = self.tables[j]
                    raise ValueError(f"tables.{i}: {t.db}.{t.table} and tables.{j} ({other.db}.{other.table}) both "
                                     f"map to {what} {name!r}; {fix}")
            if t.mode == "history" and not self.source.enable_tidb_extension:
                raise ValueError(f"tables.{i}.mode: history needs source.enable_tidb_extension: true (a version's "
                                 "commit time and identity come from TiCDC's _tidb_commit_ts fields)")
            if t.group not in self.merge_schedules:
                raise ValueError(
                    f"tables.{i}.group: {t.group!r} has no entry in merge_schedules "
                    f"(known: {', '.join(sorted(self.merge_schedules))})"
                )
        if not self.source.enable_tidb_extension:
            follows = [i for i, t in enumerate(self.tables) if self.schema_changes_of(t).truncate == "follow"]
            if follows:
                where = "schema_changes.truncate" if self.schema_changes.truncate == "follow" else \
                    f"tables.{follows[0]}.schema_changes.truncate"
                raise ValueError(f"{where}: 'follow' needs source.enable_tidb_extension (the rows' _tidb_commit_ts "
                                 "places a TRUNCATE in the change stream); enable it or set truncate: ignore")
        connector = [f"{t.db}.{t.table}" for t in self.tables if self.landing_mode_of(t) == "connector"]
        if connector and self.hole_grace_seconds <= self.connectors.buffer_flush_time_s:
            raise ValueError(
                f"hole_grace_seconds: {self.hole_grace_seconds:g} must exceed connectors.buffer_flush_time_s "
                f"({self.connectors.buffer_flush_time_s}): the Snowflake Sink may hold records that long before "
                "they land, so a shorter grace reports holes that are only late")
        if self.source.decimal_handling == "precise" and connector:
            raise ValueError(
                f"source.decimal_handling: 'precise' is not exact for the tables in connector landing mode "
                f"({', '.join(connector[:5])}{', ...' if len(connector) > 5 else ''}): the Snowflake Sink writes "
                "an Avro decimal as a JSON number, which Snowflake stores as a double, so a DECIMAL wider than "
                f"{DOUBLE_EXACT_DIGITS} digits (such as DECIMAL(65,30)) loses digits. Use 'string' (or leave it "
                "unset: connector mode then sends string decimals, replicated exactly as VARCHAR), or land those "
                "tables with landing_mode: builtin")
        return self

    # --- derived names, one place for every module -------------------------------------------
    def topic(self, t: TableConfig) -> str:
        """The topic TiCDC writes the table to (names sanitised for Kafka, as TiCDC does)."""
        return topic_name(self.source.topic_pattern, t.db, t.table)

    def landing_mode_of(self, t: TableConfig) -> str:
        return t.landing_mode or self.landing_mode

    @property
    def decimal_handling(self) -> Literal["precise", "string"]:
        """TiCDC's `avro-decimal-handling-mode`: as set, else `string` when a table is in connector landing mode
        (the Snowflake Sink's JSON numbers become doubles in Snowflake) and `precise` otherwise."""
        if self.source.decimal_handling is not None:
            return self.source.decimal_handling
        return "string" if any(self.landing_mode_of(t) == "connector" for t in self.tables) else "precise"

    def landing_table(self, t: TableConfig) -> str:
        """The connector's auto-created name for the table's topic (spec/confluent.md), unless overridden."""
        return t.landing_table or connector_table_name(self.topic(t))

    def replica_table(self, t: TableConfig) -> str:
        """The replica's name (and its asset key's last part): see `replica_table_name`, unless overridden."""
        return t.replica_table or replica_table_name(t.table)

    def freshness_of(self, t: TableConfig) -> FreshnessConfig:
        return t.freshness or self.freshness

    def schema_changes_of(self, t: TableConfig) -> SchemaChangePolicy:
        return t.schema_changes or self.schema_changes

    @cached_property
    def groups(self) -> dict[str, tuple[TableConfig, ...]]:
        out: dict[str, list[TableConfig]] = {}
        for t in self.tables:
            out.setdefault(t.group, []).append(t)
        return {g: tuple(ts) for g, ts in out.items()}


def _format_error(path: Path, exc: ValidationError) -> str:
    lines = [f"invalid config {path}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: object, *, path: Path = Path("<memory>")) -> PipelineConfig:
    """Validate a loaded YAML document; raise ConfigError naming the field."""
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read and validate the config file (no network)."""
    path = Path(path or os.environ.get("TIDB_PIPELINE_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}; set TIDB_PIPELINE_CONFIG or run `tidb-pipeline discover`") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    return parse_config(data, path=path)


def dump_tables(config: PipelineConfig, tables: Iterable[TableConfig]) -> str:
    """YAML for `config` with its table list replaced (what `discover` writes)."""
    data = config.model_dump(mode="json", exclude_defaults=False)
    data["tables"] = [t.model_dump(mode="json", exclude_defaults=True) for t in tables]
    return yaml.safe_dump(data, sort_keys=False)
