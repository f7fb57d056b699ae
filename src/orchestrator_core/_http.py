"""What an HTTP front needs from a ``Rejected`` result (the library itself speaks no HTTP)."""

from __future__ import annotations

import math
from typing import Any

from ._types import RejectionReason

__all__ = ["rejected_to_http"]

_STATUS = {
    RejectionReason.QUEUE_FULL: 429,
    RejectionReason.INVALID_REQUEST: 400,
    RejectionReason.POLICY_VIOLATION: 400,
    RejectionReason.QUEUE_CLOSED: 503,
    RejectionReason.DEADLINE_UNMEETABLE: 429,
}


def rejected_to_http(rejected: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    """``(status, headers, body)``.

    429 for retriable refusals (``QUEUE_FULL``, ``DEADLINE_UNMEETABLE``), 400 for invalid requests and policy
    violations, 503 for a closed queue. Retriable refusals carry ``Retry-After`` (whole
    seconds, rounded up, at least 1) and ``X-Backoff-Ms``. The body is JSON-ready:
    ``{code, message, policy_label, retriable, retry_after_ms}``.
    """
    reason = rejected.reason
    headers: dict[str, str] = {}
    if rejected.retriable:
        headers["Retry-After"] = str(max(1, math.ceil(rejected.retry_after_ms / 1000)))
        headers["X-Backoff-Ms"] = str(rejected.retry_after_ms)
    body = {
        "code": reason.value,
        "message": rejected.message,
        "policy_label": rejected.policy.value,
        "retriable": rejected.retriable,
        "retry_after_ms": rejected.retry_after_ms,
    }
    return _STATUS[reason], headers, body
