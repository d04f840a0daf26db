"""Apache Kafka Connect, one distributed-mode worker, from the same Maven Central jars as the lab's Kafka.

It stands in for Confluent's managed connectors where the REST lifecycle is what matters (create, update,
pause/resume, status, delete, 409 during a rebalance). Distributed mode rather than standalone because only
it has the REST lifecycle and keeps connector configs in Kafka topics, as a real cluster does. The only
plugins are the ones on the classpath (`connect-file`'s FileStream connectors), so no `plugin.path`.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tidb_pipeline.lab.kafka import ensure_jars, java_command
from tidb_pipeline.lab.service import Service

FILE_SINK_CLASS = "org.apache.kafka.connect.file.FileStreamSinkConnector"
# One group per lab: configs, offsets and statuses live in these topics of the lab's Kafka.
GROUP_ID = "tidb-pipeline-lab-connect"
CONFIG_TOPIC = "_tidb_pipeline_lab_connect_configs"
OFFSET_TOPIC = "_tidb_pipeline_lab_connect_offsets"
STATUS_TOPIC = "_tidb_pipeline_lab_connect_status"


class ConnectService(Service):
    """A Kafka Connect worker (`ConnectDistributed`) with its REST API on 127.0.0.1."""

    name = "connect"
    port_names = ("connect",)
    depends_on = ("kafka",)
    ready_timeout = 120.0

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "worker.properties"

    def _properties(self) -> str:
        host, port = self.settings.host, self.settings.port("connect")
        return "\n".join([
            f"bootstrap.servers={self.settings.kafka_bootstrap}",
            f"group.id={GROUP_ID}",
            f"config.storage.topic={CONFIG_TOPIC}",
            f"offset.storage.topic={OFFSET_TOPIC}",
            f"status.storage.topic={STATUS_TOPIC}",
            "config.storage.replication.factor=1",
            "offset.storage.replication.factor=1",
            "status.storage.replication.factor=1",
            # The defaults (25 and 5 partitions) only slow the first start of a one-node lab.
            "offset.storage.partitions=1",
            "status.storage.partitions=1",
            "key.converter=org.apache.kafka.connect.json.JsonConverter",
            "value.converter=org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable=false",
            "value.converter.schemas.enable=false",
            f"listeners=http://{host}:{port}",
            f"rest.advertised.host.name={host}",
            f"rest.advertised.port={port}",
            "rest.advertised.listener=http",
            # A restarted worker rejoins under a new member id; without this its old connectors would wait
            # up to 5 minutes (the default delay) before being reassigned.
            "scheduled.rebalance.max.delay.ms=0",
            "offset.flush.interval.ms=1000",
            # Only classpath plugins exist; skip the service-loader scan mode's warnings.
            "plugin.discovery=only_scan",
            "",
        ])

    def prepare(self) -> None:
        ensure_jars(self.settings)
        # Ports are written each start, so a changed port takes effect.
        self.properties_file.write_text(self._properties())

    def command(self) -> list[str]:
        return java_command(self.settings, self.name, "org.apache.kafka.connect.cli.ConnectDistributed",
                            str(self.properties_file), heap="512m")

    def is_ready(self) -> bool:
        base = self.address()
        with httpx.Client(timeout=2.0) as client:
            if client.get(f"{base}/connectors").status_code != 200:
                return False
            plugins = client.get(f"{base}/connector-plugins")
            if plugins.status_code != 200:
                return False
            return any(p.get("class") == FILE_SINK_CLASS for p in plugins.json())

    def address(self) -> str:
        return self.settings.connect_url
