"""Retries of the land-and-merge step: with backoff for what a retry can fix, never for what it cannot.

The step carries a Dagster `RetryPolicy` (exponential backoff with jitter, from the config's `retries`).
Whether a failure may use it is decided here from the exception chain: a broker, the schema registry or
the warehouse not answering is retryable (loads and merges are idempotent, so running the step again is
safe); anything else — bad config, a consistency check that failed, SQL the warehouse rejects — is
deterministic, and the step fails at once with `dg.Failure(allow_retries=False)`, which Dagster does not retry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import dagster as dg
import httpx
import snowflake.connector.errors as sf_errors
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tidb_pipeline.config import RetryConfig

_KAFKA_TRANSIENT = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.BROKER_NOT_AVAILABLE, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._RESOLVE,
})
# The connector's errors for a warehouse it cannot reach or that answered 5xx / timed out.
_SNOWFLAKE_TRANSIENT: tuple[type[BaseException], ...] = (
    sf_errors.OperationalError, sf_errors.InterfaceError, sf_errors.ServiceUnavailableError,
    sf_errors.RequestTimeoutError, sf_errors.BadGatewayError, sf_errors.GatewayTimeoutError,
    sf_errors.OtherHTTPRetryableError, sf_errors.InternalServerError, sf_errors.RequestExceedMaxRetryError,
)
# Snowflake error numbers that a new session fixes: the session's token expired.
_SNOWFLAKE_TRANSIENT_ERRNO = frozenset({390114, 390112})
# A reader subprocess reports its failure as text (tables.py wraps it in a RuntimeError); these mark an
# unreachable broker in that text.
_TRANSIENT_TEXT = ("KafkaException", "_TRANSPORT", "_ALL_BROKERS_DOWN", "BROKER_NOT_AVAILABLE",
                   "check that the brokers are reachable")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        return isinstance(err, KafkaError) and (err.retriable() or err.code() in _KAFKA_TRANSIENT)
    if isinstance(exc, SchemaRegistryError):
        # -1: no HTTP answer at all (connection refused, timeout).
        return exc.http_status_code in (-1, 408, 429) or exc.http_status_code >= 500
    if isinstance(exc, _SNOWFLAKE_TRANSIENT):
        return True
    if isinstance(exc, sf_errors.Error):
        return exc.errno in _SNOWFLAKE_TRANSIENT_ERRNO or str(exc.sqlstate or "")[:2] == "08"  # SQLSTATE class 08: connection exception
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True  # includes the loader's SchemaRegistryUnavailable (a ConnectionError)
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _TRANSIENT_TEXT)


def is_retryable(exc: BaseException) -> bool:
    """Whether some exception in `exc`'s chain says a service was unavailable, and none says the input is bad."""
    chain = list(_chain(exc))
    if any(isinstance(e, (ValueError, LookupError, dg.DagsterInvalidConfigError)) and not isinstance(e, TimeoutError)
           for e in chain):
        return False
    return any(_transient(e) for e in chain)


def land_and_merge_retry_policy(config: RetryConfig) -> dg.RetryPolicy | None:
    """The step's policy: `max_retries` attempts, `delay_seconds` doubling each time, +/- jitter."""
    if config.max_retries == 0:
        return None
    return dg.RetryPolicy(max_retries=config.max_retries, delay=config.delay_seconds,
                          backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def step_failure(message: str, errors: Sequence[BaseException]) -> Exception:
    """What the step raises when tables failed: a plain error (retried) only when every failure is retryable."""
    if errors and all(is_retryable(e) for e in errors):
        return RuntimeError(f"{message} (retryable: a service did not answer)")
    return dg.Failure(description=f"{message} (not retried: a retry would fail the same way)", allow_retries=False)
