"""Apache Kafka 4.x, one KRaft node (broker + controller), from Maven Central jars, run with Java 17.

It stands in for Confluent Cloud's Kafka. It has to be the real broker: the offsets sensor depends on
exact high watermarks. The jars are resolved by Maven from `pom.xml` beside this module into
`<lab>/jars` once (re-resolved when the pom changes); the Kafka Connect worker shares them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path

from tidb_pipeline.lab.service import LabError, Service, marker, port_open
from tidb_pipeline.lab.settings import LabSettings

POM = Path(__file__).with_name("pom.xml")

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


def ensure_jars(settings: LabSettings) -> Path:
    """Resolve the lab's JVM jars with Maven (cached by the pom's hash); return the folder."""
    jars = settings.jars_dir
    stamp = jars / ".pom.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and any(jars.glob("kafka_2.13-*.jar")):
        return jars
    if shutil.which("mvn") is None:
        raise LabError("Maven (mvn) is needed to fetch Kafka's jars; install it (apt-get install maven)")
    for old in jars.glob("*.jar"):
        old.unlink()
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={jars}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise LabError(f"Maven could not resolve the lab's Kafka jars from {POM}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    stamp.write_text(digest)
    return jars


def java_command(settings: LabSettings, service: str, main_class: str, *args: str, heap: str = "512m") -> list[str]:
    """argv running a JVM main class on the lab's jars, tagged with the lab marker."""
    log4j = settings.dir(service) / "log4j2.properties"
    if not log4j.exists():
        log4j.write_text(_LOG4J2)
    return [
        "java", f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={log4j}", f"-D{marker(service)}",
        "-cp", f"{settings.jars_dir}/*", main_class, *args,
    ]


class KafkaService(Service):
    """A single-node KRaft Kafka on 127.0.0.1 with a PLAINTEXT listener."""

    name = "kafka"
    port_names = ("kafka", "kafka_controller")
    ready_timeout = 90.0

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    def _properties(self) -> str:
        host, port, cport = self.settings.host, self.settings.port("kafka"), self.settings.port("kafka_controller")
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{cport}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.data_dir / 'logs'}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            # Large TPC-C batches; matches Confluent Cloud's default max message size.
            "message.max.bytes=8388608",
            "log.retention.hours=-1",
            "",
        ])

    def prepare(self) -> None:
        ensure_jars(self.settings)
        # Ports are written into the config each start, so a changed port takes effect.
        self.properties_file.write_text(self._properties())
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = _cluster_id()
        result = subprocess.run(
            java_command(self.settings, "kafka-format", "kafka.tools.StorageTool",
                         # One `=` argument: an id starting with "-" (1 in 64) would otherwise read as an option.
                         "format", f"--cluster-id={cluster_id}", "-c", str(self.properties_file)),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise LabError(f"formatting Kafka's storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def command(self) -> list[str]:
        return java_command(self.settings, self.name, "kafka.Kafka", str(self.properties_file), heap="768m")

    def is_ready(self) -> bool:
        import logging

        from confluent_kafka.admin import AdminClient

        # Probe the port first: librdkafka would log every refused connection while the JVM starts.
        if not port_open(self.settings.host, self.settings.port("kafka")):
            return False
        quiet = logging.getLogger("tidb_pipeline.lab.kafka.probe")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        admin = AdminClient({"bootstrap.servers": self.address(), "socket.timeout.ms": 1000, "logger": quiet})
        metadata = admin.list_topics(timeout=2)
        if not metadata.brokers:
            return False
        # The group coordinator loads __consumer_offsets after the broker answers metadata; wait for it
        # so the first consumer group or idempotent producer does not see "coordinator load in progress".
        groups = admin.list_consumer_groups(request_timeout=2).result()
        return groups is not None

    def address(self) -> str:
        return self.settings.kafka_bootstrap


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what `kafka-storage random-uuid` prints)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
