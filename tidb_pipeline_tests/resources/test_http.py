"""The one retry loop (`resources.http.request`) and the three clients that use it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tidb_pipeline.resources.http import RetryPolicy, request, retry_after_s
from tidb_pipeline.resources.kafka_connect import KafkaConnectError, KafkaConnectResource
from tidb_pipeline.resources.ksqldb import KsqlDbError, KsqlDbResource
from tidb_pipeline.resources.ticdc import TiCDCClient


def _scripted(answers: list[httpx.Response | type[httpx.TransportError]]) -> tuple[httpx.MockTransport, list[str]]:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path}")
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, type):
            raise answer("scripted", request=req)
        return answer

    return httpx.MockTransport(handler), calls


def _send(answers: list, **kwargs: object) -> tuple[httpx.Response, list[str], list[float]]:
    transport, calls = _scripted(answers)
    sleeps: list[float] = []
    with httpx.Client(base_url="http://svc.test", transport=transport) as http:
        kwargs.setdefault("policy", RetryPolicy(max_retries=3, backoff_s=0.5, max_wait_s=10.0))
        response = request(http, "GET", "/x", sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]
    return response, calls, sleeps


def test_transport_errors_and_5xx_are_retried_with_doubling_backoff() -> None:
    response, calls, sleeps = _send([httpx.ConnectError, httpx.Response(503), httpx.ReadTimeout, httpx.Response(200)])
    assert (response.status_code, len(calls), sleeps) == (200, 4, [0.5, 1.0, 2.0])


def test_429_waits_what_retry_after_says_capped() -> None:
    response, _, sleeps = _send([httpx.Response(429, headers={"Retry-After": "3"}),
                                 httpx.Response(429, headers={"Retry-After": "600"}),
                                 httpx.Response(429), httpx.Response(204)])
    assert (response.status_code, sleeps) == (204, [3.0, 10.0, 2.0])


def test_final_answers_are_returned_and_retries_bounded() -> None:
    response, calls, sleeps = _send([httpx.Response(404)])
    assert (response.status_code, len(calls), sleeps) == (404, 1, [])
    response, calls, sleeps = _send([httpx.Response(502)])
    assert (response.status_code, len(calls), sleeps) == (502, 4, [0.5, 1.0, 2.0])
    with pytest.raises(httpx.ConnectError):
        _send([httpx.ConnectError])
    with pytest.raises(httpx.ReadTimeout):  # the caller says this request may not be sent twice
        _send([httpx.ReadTimeout, httpx.Response(200)], retry_transport=lambda _e: False)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "1.5"})) == 1.5
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Response(429)) is None


@pytest.mark.parametrize("client", ["ticdc", "ksqldb", "kafka_connect"])
def test_every_client_retries_transport_errors_and_429(client: str) -> None:
    answers: list = [httpx.ConnectError, httpx.Response(429, headers={"Retry-After": "0"}),
                     httpx.Response(200, json=[] if client == "ksqldb" else {})]
    transport, calls = _scripted(answers)
    sleeps: list[float] = []
    call: Callable[[], object]
    if client == "ticdc":
        c = TiCDCClient("http://svc.test", transport=transport, max_retries=3, backoff_s=0.5, sleep=sleeps.append)
        call = c.list_changefeeds
    elif client == "ksqldb":
        k = KsqlDbResource(url="http://svc.test").get_client(transport=transport, sleep=sleeps.append)
        call = lambda: k.ksql("LIST STREAMS;")  # noqa: E731
    else:
        kc = KafkaConnectResource(url="http://svc.test").get_client(transport=transport, sleep=sleeps.append)
        call = lambda: kc.get_config("c")  # noqa: E731
    call()
    assert (len(calls), sleeps) == (3, [0.5, 0.0]) or (client == "kafka_connect" and (len(calls), sleeps) == (3, [0.25, 0.0]))


def test_unreachable_services_name_the_failure() -> None:
    transport, _ = _scripted([httpx.ConnectError])
    kc = KafkaConnectResource(url="http://svc.test", max_retries=1).get_client(transport=transport, sleep=lambda _s: None)
    with pytest.raises(KafkaConnectError, match=r"cannot reach http://svc.test \(ConnectError\) after 2 attempts"):
        kc.get_config("c")
    k = KsqlDbResource(url="http://svc.test", max_retries=1).get_client(transport=transport, sleep=lambda _s: None)
    with pytest.raises(KsqlDbError, match=r"cannot reach http://svc.test \(ConnectError\) after 2 attempts"):
        k.ksql("LIST STREAMS;")
