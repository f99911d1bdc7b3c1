"""Completion webhooks: a finished import is POSTed to each configured URL.

Deliveries run in their own tasks, so a slow or dead receiver never holds
an import back; failures (connection errors, timeouts, 5xx, 429) are
retried with exponential backoff. Logs name only the receiver's host: a
webhook URL often carries a token.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import aiohttp

from .._aio import run_to_completion
from .service import ImportTask

log = logging.getLogger(__name__)


def webhook_payload(task: ImportTask) -> dict[str, Any]:
    return {
        "event": "import.finished",
        "time": time.time(),
        **task.summary(),
        "models": [
            {
                "source": m.source,
                "destination": m.destination,
                "commit": m.result.commit if m.result else None,
                "file_count": len(m.result.files) if m.result else None,
                "total_bytes": m.result.total_bytes if m.result else None,
                # Files of the destination no earlier import wrote, replaced by this one (someone's own).
                "replaced": list(m.result.replaced) if m.result else None,
            }
            for m in task.models
        ],
    }


class WebhookNotifier:
    """Posts :func:`webhook_payload` of every finished task to ``urls``; use as an ``on_finished`` callback."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.urls = list(urls)
        self.attempts = max(attempts, 1)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._deliveries: set[asyncio.Task[bool]] = set()
        self._session: aiohttp.ClientSession | None = None

    def __call__(self, task: ImportTask) -> None:
        payload = webhook_payload(task)
        for url in self.urls:
            delivery = asyncio.create_task(self.deliver(url, payload), name=f"webhook:{task.id}")
            self._deliveries.add(delivery)
            delivery.add_done_callback(self._deliveries.discard)

    async def deliver(self, url: str, payload: dict[str, Any]) -> bool:
        """POST ``payload`` until the receiver answers 2xx, the attempts run out, or it refuses (4xx)."""
        host = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(url, json=payload) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    reason = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        log.warning(
                            "webhook to %s refused (%s) for import %s; not retried", host, reason, payload["id"]
                        )
                        return False
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            if attempt < self.attempts:
                delay = min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
                log.info("webhook to %s failed (%s); retrying in %.1fs", host, reason, delay)
                await asyncio.sleep(delay)
        log.warning("webhook to %s for import %s failed %d times; giving up", host, payload["id"], self.attempts)
        return False

    async def aclose(self, grace: float = 5.0) -> None:
        """Give deliveries in flight ``grace`` seconds, then cancel them."""
        if self._deliveries:
            _, pending = await asyncio.wait(set(self._deliveries), timeout=grace)
            for delivery in pending:
                delivery.cancel()
            if pending:
                await run_to_completion(asyncio.gather(*pending, return_exceptions=True))
        if self._session is not None:
            await self._session.close()
            self._session = None
