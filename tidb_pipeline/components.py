"""`TiDBReplicationComponent`: TiDB replication as a Dagster component that any `dg` project adds in a defs.yaml.

Its attributes are the config model (`config.PipelineConfig`: source, snowflake, tables, modes, schedules,
fan-out), written inline, or `config_file` naming a `tidb_pipeline.yaml`. Either way the component builds
exactly what `defs.build_defs` builds for that config. Connection settings and secrets stay in the
environment (the resources read them), never in the YAML.

Registered under the `dagster_dg_cli.registry_modules` entry point, so `dg list components` shows it and
`dg scaffold defs tidb_pipeline.components.TiDBReplicationComponent NAME` writes a starting defs.yaml
(`--from-config tidb_pipeline.yaml` copies an existing config file inline instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import BaseModel, Field, model_validator

from tidb_pipeline.config import ConfigError, PipelineConfig, load_config, parse_config
from tidb_pipeline.defs import build_defs

TYPE_NAME = "tidb_pipeline.components.TiDBReplicationComponent"


class TiDBReplicationAttributes(PipelineConfig):
    """The component's YAML: the config file's fields inline, or `config_file` alone."""

    config_file: str | None = Field(
        default=None,
        description="A tidb_pipeline.yaml to read instead of inline fields; relative to this defs.yaml's folder.",
    )

    @model_validator(mode="before")
    @classmethod
    def _render_templates(cls, data: Any) -> Any:
        """`{{ ... }}` in string values rendered with dg's template scope (`env`, `dg`, `datetime`) before the
        fields' own checks see them; `config_file` is rendered at load, where `context.project_root` exists."""
        if not isinstance(data, dict):
            return data
        scope = dg.ResolutionContext.default().at_path("attributes")
        return {k: v if k == "config_file" else scope.at_path(k).resolve_value(v) for k, v in data.items()}

    @model_validator(mode="after")
    def _file_or_inline(self) -> TiDBReplicationAttributes:
        inline = sorted(self.model_fields_set - {"config_file"})
        if self.config_file is not None and inline:
            raise ValueError(f"config_file: set either config_file or the config's fields, not both "
                             f"(also set: {', '.join(inline)})")
        return self


class ScaffoldParams(BaseModel):
    """`dg scaffold defs ... --from-config PATH`: start from an existing config file."""

    from_config: str | None = Field(default=None, description="A tidb_pipeline.yaml whose fields to copy inline.")


_STARTER = """\
# TiDB tables replicated into Snowflake through TiCDC and Kafka: the fields of tidb_pipeline.yaml (see the
# tidb_pipeline README). Connection settings and secrets come from the environment (TIDB_HOST, TICDC_URL,
# KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, SNOWFLAKE_ACCOUNT, ...), never from this file.
type: {type_name}
attributes:
  source:
    changefeed_id: tidb-pipeline
    topic_pattern: tidb_{{schema}}_{{table}}
  snowflake:
    database: TIDB_REPLICA
  # One entry per table: {{db: shop, table: orders, key: [id]}}. `tidb-pipeline discover -d DB -o FILE`
  # writes the list from TiDB's information_schema.
  tables: []
"""


class TiDBReplicationScaffolder(dg.Scaffolder[ScaffoldParams]):
    """Writes defs.yaml: a starter config, or an existing config file's fields inline (a migration)."""

    @classmethod
    def get_scaffold_params(cls) -> type[ScaffoldParams]:
        return ScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[ScaffoldParams]) -> None:
        target = request.target_path / "defs.yaml"
        source = request.params.from_config if request.params else None
        if source is None:
            target.write_text(_STARTER.format(type_name=request.type_name))
            return
        config = load_config(Path(source))  # fails naming the file and field
        # What the file says, no more: defaults it left out stay out.
        attributes = config.model_dump(mode="json", by_alias=True, exclude_unset=True)
        target.write_text(f"# Copied from {source}.\n" + yaml.safe_dump(
            {"type": request.type_name, "attributes": attributes}, sort_keys=False, default_flow_style=None))


@dg.scaffold_with(TiDBReplicationScaffolder)
class TiDBReplicationComponent(dg.Component):
    """TiDB tables replicated into Snowflake through TiCDC and Kafka.

    Per table a landing and a replica asset with their checks; per group a merge job and schedule; the
    changefeed asset, the offsets sensor, cleanup, reconcile and backfill jobs: what
    `tidb_pipeline.defs.build_defs` builds for the same config.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return TiDBReplicationAttributes

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> TiDBReplicationComponent:
        return cls(_config_from_attributes(attributes, context))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_defs(config=self.config)


def _config_from_attributes(attributes: BaseModel | None, context: dg.ComponentLoadContext) -> PipelineConfig:
    """The config the (rendered, validated) attributes describe; a `config_file` is rendered with
    `context.project_root` in scope too, and a relative one is read from the defs.yaml's folder."""
    # dagster's own scope for `{{ context.project_root }}`, as Resolvable components get it.
    from dagster.components.resolved.scopes import LoadContextScope

    raw: dict[str, Any] = {} if attributes is None else attributes.model_dump(mode="json", by_alias=True,
                                                                            exclude_unset=True)
    config_file = raw.pop("config_file", None)
    if config_file is None:
        return parse_config(raw, path=context.path / "defs.yaml")
    scope = context.with_rendering_scope({"context": LoadContextScope(context)}).resolution_context
    path = Path(str(scope.at_path("attributes").at_path("config_file").resolve_value(config_file)))
    if not path.is_absolute():
        path = context.path / path
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc}\n(named by config_file in {context.path / 'defs.yaml'})") from None
