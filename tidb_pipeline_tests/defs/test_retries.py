"""The land-and-merge step's retry policy: retried with backoff when a service did not answer, never otherwise.

The classification is checked on the exceptions the clients really raise; the policy on the real step built by
`build_defs`, run by Dagster in process, with the step's landing and merge replaced by functions that fail as
a broker outage or as bad data would (no lab needed: Dagster's retry machinery is what is under test).
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
import snowflake.connector.errors as sf_errors
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.config import parse_config
from tidb_pipeline.defs import build_defs, tables
from tidb_pipeline.resources.schema_registry import SchemaRegistryUnavailable
from tidb_pipeline.defs.retries import is_retryable, land_and_merge_retry_policy
from tidb_pipeline.defs.tables import table_keys
from tidb_pipeline.replication.wire import PoisonRecord


def _chained(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:  # noqa: BLE001
        return exc


@pytest.mark.parametrize(("exc", "retryable"), [
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), True),
    (KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)), True),
    (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), False),
    (SchemaRegistryError(503, 50301, "unavailable"), True),
    (SchemaRegistryError(-1, -1, "connection refused"), True),
    (SchemaRegistryError(404, 40401, "subject not found"), False),
    (SchemaRegistryUnavailable("registry down: nothing loaded"), True),
    (sf_errors.OperationalError("250001: Could not connect to Snowflake backend", errno=250001), True),
    (sf_errors.ServiceUnavailableError(), True),
    (sf_errors.ProgrammingError("390114: Authentication token has expired", errno=390114), True),
    (sf_errors.ProgrammingError("002003: Object does not exist or not authorized", errno=2003, sqlstate="02000"), False),
    (sf_errors.ProgrammingError("001003: SQL compilation error", errno=1003, sqlstate="42000"), False),
    (TimeoutError("topic t: no records for 30s ... check that the brokers are reachable"), True),
    (RuntimeError("merge source for R has 2 rows for one key; ... rolled back"), False),
    (ValueError("column 'x': no JSON conversion for Snowflake type GEOGRAPHY"), False),
    (PoisonRecord("bad magic byte"), False),
    (_chained(RuntimeError("1 of 1 tables failed"), KafkaException(KafkaError(KafkaError._TRANSPORT))), True),
    (_chained(RuntimeError("1 of 1 tables failed"), ValueError("bad config")), False),
    # A reader subprocess reports its failure as text.
    (RuntimeError("landing reader for topic t ranges [...] failed:\nKafkaException: KafkaError{code=_TRANSPORT}"), True),
])
def test_retryable_means_a_service_did_not_answer(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


def _run(monkeypatch: pytest.MonkeyPatch, failures: list[BaseException], **retries: Any) -> tuple[
        dg.ExecuteInProcessResult, list[str]]:
    """Materialise one table's landing and replica with the real step; landing raises `failures` in turn."""
    config = parse_config({"retries": {"delay_seconds": 0, **retries},
                           "tables": [{"db": "shop", "table": "orders", "key": ["id"]}]})
    calls: list[str] = []

    def land(*_: Any) -> dict[str, Any]:
        calls.append("land")
        if failures:
            raise failures.pop(0)
        return {"rows_loaded": 0}

    def merge(*_: Any) -> dict[str, Any]:
        calls.append("merge")
        return {"rows_inserted": 0}

    # The resources are built but never connect: landing and merge are replaced.
    for name, value in {"SNOWFLAKE_ACCOUNT": "acct", "SNOWFLAKE_USER": "user", "SNOWFLAKE_PASSWORD": "pw"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tables, "_land", land)
    monkeypatch.setattr(tables, "_merge", merge)
    defs = build_defs(config=config)
    keys = table_keys(config, config.tables[0])
    job = defs.resolve_job_def("merge_default").get_subset(asset_selection={keys.landing, keys.replica},
                                                           asset_check_selection=set())
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    return result, calls


def test_a_broker_outage_is_retried_and_the_run_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    outage = KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    result, calls = _run(monkeypatch, [outage, outage])
    assert result.success
    assert calls == ["land", "land", "land", "merge"]
    retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retries) == 2


def test_bad_data_fails_at_once_without_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    result, calls = _run(monkeypatch, [ValueError("topic 'a b' has characters Kafka does not allow")])
    assert not result.success
    assert calls == ["land"]
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "not retried: a retry would fail the same way" in failure.step_failure_data.error.message


def test_retries_stop_at_the_configured_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    outage = SchemaRegistryUnavailable("registry down")
    result, calls = _run(monkeypatch, [outage] * 5, max_retries=2)
    assert not result.success
    assert calls == ["land"] * 3


def test_the_policy_backs_off_exponentially_from_the_config() -> None:
    policy = land_and_merge_retry_policy(parse_config({"retries": {"max_retries": 3, "delay_seconds": 10}}).retries)
    assert policy == dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
    assert land_and_merge_retry_policy(parse_config({"retries": {"max_retries": 0}}).retries) is None
