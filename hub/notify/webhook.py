"""Alerts POSTed to HTTP endpoints: the only module of ``hub.notify`` that imports httpx.

The body is ``AlertEvent.to_json()`` as JSON bytes. Headers::

    Content-Type: application/json
    X-Hub-Event: fired | resolved | acknowledged
    X-Hub-Alert-Id: <alert id>
    X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the secret>

A receiver verifies the signature over the raw body before parsing it. Outcomes:

=========================================  ============================================
2xx                                        delivered
408, 429, 5xx, connection errors, timeouts retryable ``NotifyError`` (``Retry-After``
                                           honoured)
other 4xx, 3xx                             permanent ``NotifyError``: the request itself
                                           is wrong (URL, auth), retrying cannot help
=========================================  ============================================
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import orjson

from hub.alerts.model import AlertEvent
from hub.notify.config import WebhookSpec
from hub.notify.dispatch import NotifyError
from hub.retry import parse_retry_after

_RETRYABLE_4XX = frozenset({408, 429})


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``: ``sha256=`` and the hex HMAC."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookChannel:
    """One webhook endpoint, with its filters. Used by one worker thread only."""

    def __init__(self, spec: WebhookSpec, *, transport: httpx.BaseTransport | None = None) -> None:
        self._spec = spec
        self.name = f"webhook:{spec.name}"
        self._http = httpx.Client(
            headers={"User-Agent": "prato-hub"},
            timeout=spec.timeout_s,
            transport=transport,
            follow_redirects=False,
        )

    def accepts(self, event: AlertEvent) -> bool:
        """True when ``event`` passes the endpoint's severity, profile, zone and kind filters."""
        return self._spec.matches(event)

    def send(self, event: AlertEvent) -> None:
        """POST ``event``; raises ``NotifyError`` classified as in the module docstring."""
        body = orjson.dumps(event.to_json())
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Event": event.kind,
            "X-Hub-Alert-Id": event.alert.id,
            "X-Hub-Signature-256": signature(self._spec.signing_secret, body),
        }
        where = f"webhook {self._spec.name} ({self._spec.url})"
        try:
            response = self._http.post(self._spec.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise NotifyError(f"{where} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise NotifyError(f"{where} unreachable: {exc!r}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"{where} answered HTTP {status}: {response.text[:200]}"
        if status >= 500 or status in _RETRYABLE_4XX:
            raise NotifyError(
                detail, retry_after_s=parse_retry_after(response.headers.get("Retry-After"))
            )
        raise NotifyError(detail, permanent=True)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
