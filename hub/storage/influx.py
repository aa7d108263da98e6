"""The InfluxDB client: line protocol to ``/write``, InfluxQL to ``/query`` (v1-compatible API).

This is the only module that imports ``httpx``. It speaks the v1 HTTP API that InfluxDB 1.x,
2.x (through its DBRP mapping) and 3 Core all serve, with no auth, user/password (HTTP basic)
or a token (``Authorization: Token ...``). HTTP outcomes become the hub's own errors, by what
the caller should do next:

=====================================  ===================  ==============================
outcome                                error                the writer ...
=====================================  ===================  ==============================
2xx                                    --                   acknowledges the messages
400, 413, 422 (bad points, too big)    ``StoreRejected``    splits the batch, dead-letters
                                                            the message InfluxDB refuses
401, 403, 404 (auth, no database)      ``StoreUnavailable`` retries: an operator must act,
                                                            nothing is dropped meanwhile
429, 5xx, connection errors, timeouts  ``StoreUnavailable`` retries with backoff, honouring
                                                            ``Retry-After``
=====================================  ===================  ==============================
"""

from __future__ import annotations

import gzip
from typing import Any

import httpx

from hub.errors import StoreRejected, StoreUnavailable
from hub.retry import parse_retry_after


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])[:500]
    return response.text[:500]


# queries longer than this go in a POST body instead of the URL
LONG_QUERY = 2_000


class InfluxClient:
    """A small, thread-confined client for one InfluxDB database (and retention policy)."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        retention_policy: str = "",
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        use_gzip: bool = True,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "prato-hub"}
        auth: httpx.BasicAuth | None = None
        if token:
            headers["Authorization"] = f"Token {token}"
        elif username is not None:
            auth = httpx.BasicAuth(username, password or "")
        self.url = url.rstrip("/")
        self.database = database
        self._params = {"db": database, "precision": "ms"}
        if retention_policy:
            self._params["rp"] = retention_policy
        self._gzip = use_gzip
        self._http = httpx.Client(
            base_url=self.url, headers=headers, auth=auth, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise StoreUnavailable(f"InfluxDB at {self.url} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"InfluxDB at {self.url} unreachable: {exc}") from exc

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        detail = f"{what}: HTTP {status}: {_error_text(response)}"
        if status in (400, 413, 422):
            raise StoreRejected(detail)
        if status in (401, 403):
            raise StoreUnavailable(f"{detail} (check HUB_INFLUX_TOKEN / USER / PASSWORD)")
        if status == 404:
            raise StoreUnavailable(f"{detail} (does database {self.database!r} exist?)")
        raise StoreUnavailable(
            detail, retry_after_s=parse_retry_after(response.headers.get("Retry-After"))
        )

    def write(self, lines: str) -> None:
        """Write newline-separated line protocol (timestamps in milliseconds)."""
        body = lines.encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._gzip:
            # level 1: ~4x smaller on these payloads at a fraction of the CPU of level 9
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        response = self._send("POST", "/write", params=self._params, content=body, headers=headers)
        self._check(response, "write")

    def query(self, influxql: str, *, epoch: str = "ms") -> list[dict[str, Any]]:
        """Run an InfluxQL read query; returns the ``series`` of the first statement.

        Callers bound every query in time (InfluxDB 3 Core refuses unbounded scans).
        """
        params = {"db": self.database, "q": influxql}
        if epoch:
            params["epoch"] = epoch  # without it InfluxDB answers RFC 3339 times
        if "rp" in self._params:
            params["rp"] = self._params["rp"]
        if len(influxql) <= LONG_QUERY:
            response = self._send("GET", "/query", params=params)
        else:
            # a long query (a sharing filter naming thousands of devices) in a form body: URLs
            # past a few kB are refused by servers and proxies; every version takes POST
            query = params.pop("q")
            response = self._send("POST", "/query", params=params, data={"q": query})
        self._check(response, "query")
        results = response.json().get("results", [])
        if not results:
            return []
        first = results[0]
        if "error" in first:
            raise StoreRejected(f"query: {first['error']}")
        series: list[dict[str, Any]] = first.get("series", [])
        return series

    def command(self, influxql: str) -> None:
        """Run a statement that changes data or schema (``DELETE``, ``DROP``...) via POST.

        The hub's ingest path never calls this; operators' tools and tests do.
        """
        response = self._send("POST", "/query", params={"db": self.database}, data={"q": influxql})
        self._check(response, "command")
        for result in response.json().get("results", []):
            if "error" in result:
                raise StoreRejected(f"command: {result['error']}")

    def ping(self) -> bool:
        """True when InfluxDB answers ``/ping``."""
        try:
            response = self._send("GET", "/ping")
        except StoreUnavailable:
            return False
        return response.status_code < 300
