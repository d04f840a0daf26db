"""Reconciling one Kafka Connect connector to its desired config (the executor the connector assets call).

Read the stored config and state, plan (replication.connectors.plan), then act: a missing connector is
created and an outdated one updated with the *full desired* config — never with what was read back, which
Confluent Cloud masks — and a paused one is resumed. Running it again with the same config does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidb_pipeline.replication.connectors import Plan, plan
from tidb_pipeline.resources.kafka_connect import ConnectorStatus, KafkaConnectClient, is_secret_key


class ConnectorFailedError(RuntimeError):
    """The connector or one of its tasks is FAILED after reconciling."""


@dataclass(frozen=True)
class ReconcileResult:
    name: str
    plan: Plan
    # Status after the steps (for metadata); None only if the connector vanished meanwhile.
    status: ConnectorStatus | None

    @property
    def action(self) -> str:
        return self.plan.action

    def metadata(self) -> dict[str, str]:
        """Key names and states only: safe for asset metadata and logs."""
        return {
            "connector": self.name,
            "steps": ",".join(self.plan.steps) or "noop",
            "changed_keys": ",".join(self.plan.diff.keys),
            "state": self.status.state if self.status else "ABSENT",
            "tasks": ",".join(f"{t.id}:{t.state}" for t in self.status.tasks) if self.status else "",
        }


def reconcile_connector(client: KafkaConnectClient, name: str, desired: Mapping[str, str], *,
                        force_update: bool = False, wait_running_s: float | None = None) -> ReconcileResult:
    """Bring connector `name` to `desired` and running; with `wait_running_s`, wait until it and its tasks run."""
    desired = {**desired, "name": name}
    actual = client.get_config(name)
    status = client.get_status(name) if actual is not None else None
    steps = plan(desired, actual, status.state if status else None, flavor=client.flavor, force_update=force_update)
    for step in steps.steps:
        if step in ("create", "update"):
            # PUT is create-or-update on both flavors, so a connector created concurrently is no error.
            client.put_config(name, desired)
        else:
            client.resume(name)
    if wait_running_s is not None:
        status = client.wait_for_state(name, {"RUNNING"}, timeout_s=wait_running_s)
    elif steps.steps or status is None:
        status = client.get_status(name)
    return ReconcileResult(name, steps, status)


def _scrub(text: str, desired: Mapping[str, str]) -> str:
    # Connect may echo config values back in task traces.
    for value in sorted((v for k, v in desired.items() if is_secret_key(k) and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    return text


def raise_if_failed(result: ReconcileResult, desired: Mapping[str, str]) -> None:
    """Raise `ConnectorFailedError` naming the first failure (secrets of `desired` redacted) if anything FAILED."""
    status = result.status
    if status is not None and (status.state == "FAILED" or status.failed_tasks):
        failed = status.failed_tasks
        detail = failed[0].message if failed else status.message
        raise ConnectorFailedError(
            f"connector {result.name!r} is {status.state} with tasks {[f'{t.id}:{t.state}' for t in status.tasks]} "
            f"after {result.action}: {_scrub(detail, desired) or 'no message'}; fix the cause named there and "
            "materialise again (an update or resume restarts it)"
        )
