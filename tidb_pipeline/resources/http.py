"""One HTTP request loop with bounded retries, shared by the TiCDC, ksqlDB and Kafka Connect clients.

Retried: transport errors (when the caller says the request may be sent again), and answers the caller
marks retryable (typically 5xx); 429 is always retried (the server did not act on the request), waiting
what its `Retry-After` says (seconds or an HTTP date) capped at `max_wait_s`. Backoff otherwise doubles from
`backoff_s`. The caller turns the final answer, or the final transport error, into its own error type.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import httpx


class HttpClient:
    """What the clients over one `httpx.Client` (their `http`) do alike: close it, alone or as a `with` block."""

    http: httpx.Client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def basic_auth_client(url: str, *, api_key: str | None, api_secret: str | None, timeout_s: float, accept: str,
                      transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An `httpx.Client` on `url`, with Basic auth when an API key is given (as Confluent's REST APIs take it)."""
    auth = httpx.BasicAuth(api_key, api_secret or "") if api_key else None
    return httpx.Client(base_url=url.rstrip("/"), auth=auth, timeout=timeout_s, transport=transport,
                        headers={"Accept": accept})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 10.0

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, self.max_wait_s)


def retry_after_s(response: httpx.Response) -> float | None:
    """The wait a `Retry-After` header asks for (delta-seconds or HTTP date), None when absent or unreadable."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def request(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    retry_status: Callable[[httpx.Response], bool] = lambda r: r.status_code >= 500,
    retry_transport: Callable[[httpx.TransportError], bool] = lambda _e: True,
    on_retry: Callable[[str, int, float], None] | None = None,
    json: Any = None,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send until an answer is final or retries run out; returns the last answer (any status).

    Raises the last `httpx.TransportError` when the request could not be completed. `on_retry(reason,
    attempt, delay)` is called before each wait; `reason` is a status code or an exception's type name only.
    """
    attempt = 0
    while True:
        try:
            response = http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            if not retry_transport(exc) or attempt >= policy.max_retries:
                raise
            reason, delay = type(exc).__name__, policy.backoff(attempt)
        else:
            if response.status_code == 429:
                after = retry_after_s(response)
                delay = min(after if after is not None else policy.backoff(attempt), policy.max_wait_s)
            elif response.status_code >= 400 and retry_status(response):
                delay = policy.backoff(attempt)
            else:
                return response
            if attempt >= policy.max_retries:
                return response
            reason = f"HTTP {response.status_code}"
        if on_retry is not None:
            on_retry(reason, attempt + 1, delay)
        sleep(delay)
        attempt += 1
