"""The lab's Kafka Connect worker is a real distributed-mode worker: REST answers, plugins, data flows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tidb_pipeline.lab.connect import (
    CONFIG_TOPIC,
    FILE_SINK_CLASS,
    GROUP_ID,
    OFFSET_TOPIC,
    STATUS_TOPIC,
    ConnectService,
)
from tidb_pipeline.lab.service import Service, wait_until
from tidb_pipeline.lab.settings import LabSettings


def test_worker_properties(tmp_path: Path) -> None:
    settings = LabSettings(root=tmp_path, ports={"kafka": 29092, "connect": 28083})
    lines = ConnectService(settings)._properties().splitlines()
    assert {"bootstrap.servers=127.0.0.1:29092", "listeners=http://127.0.0.1:28083", f"group.id={GROUP_ID}",
            f"config.storage.topic={CONFIG_TOPIC}", "config.storage.replication.factor=1",
            "offset.storage.replication.factor=1", "status.storage.replication.factor=1",
            "scheduled.rebalance.max.delay.ms=0"} <= set(lines)
    assert not any(line.startswith("plugin.path") for line in lines)


def test_ready_worker_is_distributed_and_has_file_sink(connect: Service, kafka: Service) -> None:
    assert connect.is_ready()
    with httpx.Client(base_url=connect.address(), timeout=10) as http:
        root = http.get("/").json()
        assert root["version"] == "4.1.1" and root["kafka_cluster_id"]
        plugins = {p["class"] for p in http.get("/connector-plugins").json()}
        assert FILE_SINK_CLASS in plugins
    # Distributed mode keeps its state in Kafka topics (standalone would use a local file).
    topics = AdminClient({"bootstrap.servers": kafka.address()}).list_topics(timeout=10).topics
    assert {CONFIG_TOPIC, OFFSET_TOPIC, STATUS_TOPIC} <= set(topics)


def test_file_sink_writes_what_kafka_holds(connect: Service, kafka: Service, tmp_path: Path) -> None:
    topic = f"t_connect_{uuid.uuid4().hex[:8]}"
    values = [f"row-{i}" for i in range(25)]
    producer = Producer({"bootstrap.servers": kafka.address(), "acks": "all"})
    for v in values:
        # One partition keeps the file in produce order.
        producer.produce(topic, value=json.dumps(v).encode(), partition=0)
    assert producer.flush(30) == 0

    out = tmp_path / "sink.txt"
    name = f"file-sink-{topic}"
    with httpx.Client(base_url=connect.address(), timeout=30) as http:
        created = http.post("/connectors", json={"name": name, "config": {
            "connector.class": FILE_SINK_CLASS, "tasks.max": "1", "topics": topic, "file": str(out),
            "consumer.override.auto.offset.reset": "earliest"}})
        assert created.status_code == 201, created.text
        try:
            wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= len(values), timeout=60,
                       what=f"{len(values)} lines in {out}")
            assert out.read_text().splitlines() == values
        finally:
            assert http.delete(f"/connectors/{name}").status_code == 204
