"""The InfluxDB client's auth, gzip and error mapping, with httpx's MockTransport at the seam."""

from __future__ import annotations

import base64
import gzip

import httpx
import pytest

from hub.errors import StoreRejected, StoreUnavailable
from hub.storage.influx import InfluxClient


def _client(handler: object, **kwargs: object) -> InfluxClient:
    return InfluxClient(
        "http://influx:8086/",
        "prato",
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]  # plain function
        **kwargs,  # type: ignore[arg-type]  # keyword options of the constructor
    )


def test_write_with_token_gzip_and_ms_precision() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    _client(handler, token="s3cret", retention_policy="week").write("m,device_id=a v=1 5")
    request = seen[0]
    assert request.url.path == "/write"
    assert dict(request.url.params) == {"db": "prato", "precision": "ms", "rp": "week"}
    assert request.headers["Authorization"] == "Token s3cret"
    assert request.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(request.content) == b"m,device_id=a v=1 5"


def test_user_password_is_basic_auth_and_no_auth_sends_none() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    _client(handler, username="hub", password="pw", use_gzip=False).write("m v=1 1")
    _client(handler).write("m v=1 1")
    assert seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"hub:pw").decode()
    assert seen[0].content == b"m v=1 1"
    assert "Authorization" not in seen[1].headers


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (400, StoreRejected, "unable to parse"),
        (422, StoreRejected, "unable to parse"),
        (413, StoreRejected, "unable to parse"),
        (401, StoreUnavailable, "check HUB_INFLUX_TOKEN"),
        (404, StoreUnavailable, "does database 'prato' exist"),
        (500, StoreUnavailable, "HTTP 500"),
        (503, StoreUnavailable, "HTTP 503"),
    ],
)
def test_errors_are_classified_by_what_to_do_next(
    status: int, error: type[Exception], text: str
) -> None:
    client = _client(lambda r: httpx.Response(status, json={"error": "unable to parse 'x'"}))
    with pytest.raises(error, match=text):
        client.write("x")


def test_retry_after_is_honoured_and_connection_errors_are_unavailable() -> None:
    client = _client(lambda r: httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(StoreUnavailable) as caught:
        client.write("m v=1 1")
    assert caught.value.retry_after_s == 7.0

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(StoreUnavailable, match="unreachable"):
        _client(refuse).write("m v=1 1")
    assert _client(refuse).ping() is False


def test_query_errors_inside_results_are_rejections() -> None:
    client = _client(lambda r: httpx.Response(200, json={"results": [{"error": "bad syntax"}]}))
    with pytest.raises(StoreRejected, match="bad syntax"):
        client.query("SELEC nonsense")


def test_a_long_query_goes_in_a_post_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": [{"statement_id": 0}]})

    client = _client(handler)
    short = "SELECT last(v) FROM m WHERE time > 0"
    long = short + " AND (" + " OR ".join(f"\"device_id\" = 'd{n}'" for n in range(500)) + ")"
    client.query(short)
    client.query(long)
    assert [r.method for r in seen] == ["GET", "POST"]
    assert seen[0].url.params["q"] == short
    assert "q" not in seen[1].url.params
    assert seen[1].url.params["db"] == "prato"
    assert seen[1].url.params["epoch"] == "ms"
    assert httpx.QueryParams(seen[1].content.decode())["q"] == long
