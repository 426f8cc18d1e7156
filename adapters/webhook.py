"""Deliver alerts to a webhook: one JSON POST per alert, retried with exponential backoff.

The body is :meth:`~pipestate.domain.alerts.Alert.payload`: a Slack-compatible ``text`` field
plus every field of the alert, so a Slack (or Mattermost, Teams-workflow …) incoming-webhook URL
works as it is. Standard library only (``urllib`` on a worker thread). Webhook URLs often embed a
secret, so neither logs nor errors show more than the URL's scheme and host.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Final
from urllib.parse import urlsplit

import tenacity

from pipestate.domain.alerts import Alert
from pipestate.domain.errors import InvalidArgument

DEFAULT_ATTEMPTS: Final = 5
DEFAULT_TIMEOUT: Final = 10.0


class WebhookError(Exception):
    """The webhook refused the alert or could not be reached (after every attempt)."""


class _Retryable(WebhookError):
    pass


class WebhookNotifier:
    """POST each alert to ``url``.

    Args:
        url: http(s) URL.
        attempts: tries per alert (429, 5xx and network errors are retried; other 4xx are not).
        backoff: first wait in seconds, doubled per attempt (capped at 30 s).
        timeout: seconds per request.

    Raises:
        InvalidArgument: not an http(s) URL.
    """

    def __init__(
        self,
        url: str,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = 0.5,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument("webhook", parts.scheme + "://…", "expected an http(s) URL")
        if attempts < 1:
            raise InvalidArgument("attempts", attempts, "must be >= 1")
        self._url = url
        self._shown = f"{parts.scheme}://{parts.hostname}"
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"WebhookNotifier({self._shown})"

    __str__ = __repr__

    async def send(self, alert: Alert) -> None:
        """POST the alert; raises :class:`WebhookError` when every attempt failed."""
        body = json.dumps(alert.payload()).encode()
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential(multiplier=self._backoff, max=30),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await asyncio.to_thread(self._post, body)
        except _Retryable as exc:
            raise WebhookError(f"{exc} (after {self._attempts} attempts)") from None

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pipestate-alerts"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # the error carries the open response
            message = f"webhook {self._shown} answered {exc.code}"
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(message) from None
            raise WebhookError(message) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"webhook {self._shown} unreachable: {type(reason).__name__}") from None
