"""RabbitMQ's management plugin, read for what AMQP does not tell: when the oldest message of a
queue was made ready (`head_message_timestamp`, from the `timestamp` property the transport puts
on every message). The dashboard's broker page asks as it samples; the hot path never does.

The API's address is the transport option `management_url` (Flower's `--broker-api`), by default
the broker's host on port 15672 with the broker's credentials. A broker without the plugin
answers nothing: the page then shows no age, and the API is asked again a minute later.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.request
from collections.abc import Sequence
from urllib.parse import quote, unquote, urlsplit

logger = logging.getLogger("conveyor.brokers.amqp")

#: After the API did not answer, it is asked again this much later.
RETRY_SECONDS = 60.0
#: A request the API takes longer than this to answer counts as no answer.
TIMEOUT_SECONDS = 2.0


def default_url(broker_url: str) -> str:
    """The management API beside a broker: the same host and credentials, port 15672 (15671 over TLS)."""
    parts = urlsplit(broker_url)
    user = parts.username or "guest"  # as written in the URL: percent-encoded where it must be
    password = parts.password if parts.password is not None else ("guest" if user == "guest" else "")
    scheme, port = ("https", 15671) if parts.scheme == "amqps" else ("http", 15672)
    return f"{scheme}://{user}:{password}@{parts.hostname or 'localhost'}:{port}/api/"


def vhost_of(broker_url: str) -> str:
    path = urlsplit(broker_url).path
    return "/" if path in ("", "/", "//") else unquote(path[1:])


class ManagementAPI:
    """The queues' head timestamps, read in one request per call."""

    def __init__(self, url: str, vhost: str) -> None:
        parts = urlsplit(url)
        netloc = parts.hostname or "localhost"
        if parts.port:
            netloc += f":{parts.port}"
        self.url = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/queues/{quote(vhost, safe='')}"
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._silent_until = 0.0

    def head_ages(self, names: Sequence[str]) -> dict[str, float]:
        """Seconds since the head of each named queue became ready, for those that have one."""
        if not names or time.monotonic() < self._silent_until:
            return {}
        request = urllib.request.Request(
            f"{self.url}?columns=name,messages_ready,head_message_timestamp",
            headers={"Authorization": self._authorization},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                queues = json.loads(response.read())
        except (OSError, ValueError) as exc:  # unreachable, refused, not JSON: no ages for a while
            self._silent_until = time.monotonic() + RETRY_SECONDS
            logger.info("RabbitMQ's management API at %s did not answer (%s): no message ages for now", self.url, exc)
            return {}
        wanted, now, ages = set(names), time.time(), {}
        for queue in queues if isinstance(queues, list) else []:
            if not isinstance(queue, dict) or queue.get("name") not in wanted:
                continue
            head = queue.get("head_message_timestamp")
            if isinstance(head, (int, float)) and queue.get("messages_ready"):
                ages[queue["name"]] = max(0.0, now - head)
        return ages
