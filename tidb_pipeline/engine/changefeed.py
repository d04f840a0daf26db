"""Executing the changefeed plan: make TiCDC run the declared changefeed (no Dagster assets here yet).

`replication.changefeed` decides (pure); this module reads the running changefeed through the `ticdc`
client, executes the decision and reports state, checkpoint and lag. Updates always send the full config
with the real secrets from `DesiredChangefeed`, never a sink URI read back from GET (its passwords are
`xxxxx`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from tidb_pipeline.config import PipelineConfig
from tidb_pipeline.replication.changefeed import (
    Action,
    DesiredChangefeed,
    KafkaSink,
    Registry,
    build_changefeed,
    plan,
)
from tidb_pipeline.resources.kafka import KafkaResource
from tidb_pipeline.resources.schema_registry import SchemaRegistryResource
from tidb_pipeline.resources.ticdc import TiCDCClient, TiCDCError, request_secrets, scrub

_log = logging.getLogger("tidb_pipeline.changefeed")

NOT_EXISTS = "CDC:ErrChangeFeedNotExists"


class ChangefeedReconcileError(RuntimeError):
    """The changefeed cannot be brought to the declared state without a human decision."""


@dataclass(frozen=True)
class ReconcileResult:
    changefeed_id: str
    action: Action
    steps: tuple[str, ...]
    differences: tuple[str, ...]
    state: str
    checkpoint_ts: int
    checkpoint_time: str
    lag_s: float
    error: str | None = None

    def metadata(self) -> dict[str, Any]:
        """Plain values for materialisation metadata (all masked)."""
        return {
            "action": self.action,
            "steps": list(self.steps),
            "differences": list(self.differences),
            "state": self.state,
            "checkpoint_ts": self.checkpoint_ts,
            "checkpoint_time": self.checkpoint_time,
            "lag_s": round(self.lag_s, 3),
            **({"error": self.error} if self.error else {}),
        }


def lag_seconds(checkpoint_ts: int, now_ms: int) -> float:
    """Seconds between now and a TSO's physical time (`ts >> 18` is epoch ms); 0 for a checkpoint ahead."""
    return max(0.0, (now_ms - (checkpoint_ts >> 18)) / 1000)


def _unwrap(value: Any) -> Any:
    # An unresolved resource field holds the EnvVar (a str of the variable's *name*), not the secret.
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def sink_settings(
    kafka: KafkaResource, registry: SchemaRegistryResource, *, replication_factor: int | None = None
) -> tuple[KafkaSink, Registry]:
    """The Kafka and registry settings TiCDC needs, from the resources the rest of the pipeline uses."""
    protocol = kafka.security_protocol.upper()
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol.startswith("SASL")
    sink = KafkaSink(
        bootstrap_servers=kafka.bootstrap_servers,
        tls=tls,
        sasl_user=_unwrap(kafka.sasl_username) if sasl else None,
        sasl_password=_unwrap(kafka.sasl_password) if sasl else None,
        sasl_mechanism=kafka.sasl_mechanism.lower(),
        # Confluent Cloud requires 3; a lab or dev broker usually has one node.
        replication_factor=replication_factor or (3 if tls else 1),
    )
    reg = Registry(url=registry.url, api_key=_unwrap(registry.api_key), api_secret=_unwrap(registry.api_secret))
    return sink, reg


def desired_changefeed(
    config: PipelineConfig, kafka: KafkaResource, registry: SchemaRegistryResource, *, start_ts: int = 0
) -> DesiredChangefeed:
    sink, reg = sink_settings(kafka, registry)
    return build_changefeed(config, sink, reg, start_ts=start_ts)


def reconcile_changefeed(
    client: TiCDCClient,
    desired: DesiredChangefeed,
    *,
    force_update: bool = False,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    log: logging.Logger = _log,
) -> ReconcileResult:
    """Create the changefeed if missing; pause -> update -> resume if its config differs; resume if stopped."""
    cf_id = desired.changefeed_id
    try:
        actual = client.get(cf_id)
    except TiCDCError as exc:
        if exc.code != NOT_EXISTS:
            raise
        actual = None
    decision = plan(desired, actual, force_update=force_update)
    if decision.action == "blocked":
        raise ChangefeedReconcileError(decision.reason)
    if decision.differences:
        log.info("changefeed %s differs: %s", cf_id, "; ".join(decision.differences))
    if decision.steps:
        log.info("changefeed %s: %s (%s)", cf_id, " -> ".join(decision.steps), decision.reason)
    paused = False
    for step in decision.steps:
        if step == "create":
            client.create(cf_id, desired.sink_uri, desired.replica_config, start_ts=desired.start_ts)
        elif step == "pause":
            client.pause(cf_id)
            paused = True
        elif step == "update":
            try:
                client.update(cf_id, desired.sink_uri, desired.replica_config)
            except TiCDCError:
                # Keep replicating with the old config rather than leave the pipeline stopped by a bad change.
                if paused:
                    client.resume(cf_id)
                raise
        elif step == "resume":
            client.resume(cf_id)
    final = client.get(cf_id)
    error = None
    if final.error:
        # A sink error may quote the broker's or registry's answer; keep the secrets out of metadata.
        secrets = request_secrets(desired.sink_uri, desired.replica_config)
        error = scrub(f"{final.error.code}: {final.error.message}", secrets)
    return ReconcileResult(
        changefeed_id=cf_id,
        action=decision.action,
        steps=decision.steps,
        differences=decision.differences,
        state=final.state,
        checkpoint_ts=final.checkpoint_ts,
        checkpoint_time=final.checkpoint_time,
        lag_s=lag_seconds(final.checkpoint_ts, now_ms()),
        error=error,
    )
