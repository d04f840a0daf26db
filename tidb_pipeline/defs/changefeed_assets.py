"""The `ticdc/<changefeed>` asset: materialising it makes TiCDC run the declared changefeed."""

import dagster as dg

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.engine.changefeed import desired_changefeed, reconcile_changefeed
from tidb_pipeline.defs.tables import changefeed_key
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCResource


def build_changefeed_asset(*, config: PipelineConfig) -> dg.AssetsDefinition:
    cf_id = config.source.changefeed_id

    @dg.asset(
        key=changefeed_key(config), group_name="ticdc", kinds={"tidb"},
        description=(
            f"TiCDC changefeed `{cf_id}`: Avro to Kafka, one topic per table (`{config.source.topic_pattern}`), "
            "index-value partitioning. Materialising creates it if missing, or pauses, updates and resumes it "
            "when its config differs from the declared one."
        ),
    )
    def _changefeed(
        context: dg.AssetExecutionContext, ticdc: TiCDCResource, kafka: KafkaResource,
        schema_registry: SchemaRegistryResource,
    ) -> dg.MaterializeResult:
        desired = desired_changefeed(config, kafka, schema_registry)
        with ticdc.get_client() as client:
            result = reconcile_changefeed(client, desired, log=context.log)
        return dg.MaterializeResult(metadata=result.metadata())

    return _changefeed
