"""Fluent construction of a ``Queue``: ``Queue.builder().capacity(100).policy("drop-lru").build()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._types import AdmissionPolicy

__all__ = ["QueueBuilder"]


class QueueBuilder:
    """Collects ``Queue`` arguments; ``build()`` validates them (the same checks as ``Queue(...)``)."""

    __slots__ = ("_queue_class", "_kwargs")

    def __init__(self, queue_class: type[Any]) -> None:
        self._queue_class = queue_class
        self._kwargs: dict[str, Any] = {}

    def capacity(self, capacity: int) -> QueueBuilder:
        """The most jobs the queue holds (required)."""
        self._kwargs["capacity"] = capacity
        return self

    def policy(self, policy: AdmissionPolicy | str) -> QueueBuilder:
        """The admission policy (default ``REJECT_NEW``)."""
        self._kwargs["policy"] = policy
        return self

    def pool_id(self, pool_id: str) -> QueueBuilder:
        """The worker pool this queue feeds (default ``"default"``)."""
        self._kwargs["pool_id"] = pool_id
        return self

    def clock(self, clock: Callable[[], float]) -> QueueBuilder:
        """A clock in seconds replacing the monotonic one (simulation, tests)."""
        self._kwargs["clock"] = clock
        return self

    def max_tokens_limit(self, limit: int) -> QueueBuilder:
        """Refuse tasks over this many ``max_tokens`` with ``POLICY_VIOLATION``."""
        self._kwargs["max_tokens_limit"] = limit
        return self

    def id_prefix(self, prefix: str) -> QueueBuilder:
        """Prefix for generated job ids (default: random per queue)."""
        self._kwargs["id_prefix"] = prefix
        return self

    def max_wait_ms(self, max_wait_ms: float) -> QueueBuilder:
        """Default deadline of tasks that set none: longer-waiting jobs expire (``take_expired``)."""
        self._kwargs["max_wait_ms"] = max_wait_ms
        return self

    def admit_only_feasible(self, flag: bool = True) -> QueueBuilder:
        """Refuse (``DEADLINE_UNMEETABLE``) a task whose predicted wait exceeds its deadline."""
        self._kwargs["admit_only_feasible"] = flag
        return self

    def max_queued_per_tenant(self, limit: int) -> QueueBuilder:
        """Refuse a tenant's task (``POLICY_VIOLATION``) once it has this many jobs queued."""
        self._kwargs["max_queued_per_tenant"] = limit
        return self

    def max_queued_tokens(self, limit: int) -> QueueBuilder:
        """Bound the sum of ``max_tokens + prompt_tokens`` of queued jobs alongside the capacity."""
        self._kwargs["max_queued_tokens"] = limit
        return self

    def build(self) -> Any:
        """Make the queue; raises ``TypeError`` / ``ValueError`` naming a bad argument."""
        if "capacity" not in self._kwargs:
            raise ValueError("capacity must be set before build(), got nothing")
        return self._queue_class(**self._kwargs)
