"""Enumerations shared by both engines and the facade.

Each enum accepts its string value as well as its member (``Priority("batch")``,
``AdmissionPolicy.parse("drop-lru")``); the parse helpers raise a ``ValueError``
that names the parameter, the bad value and the valid choices.
"""

from __future__ import annotations

import enum

__all__ = ["AdmissionPolicy", "Priority", "RejectionReason"]


class _ParsedEnum(str, enum.Enum):
    """A string-valued enum whose members compare equal to their string value."""

    @classmethod
    def parse(cls, value: object, param: str) -> _ParsedEnum:
        if isinstance(value, cls):
            return value
        if type(value) is str:
            for member in cls:
                if member.value == value:
                    return member
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{param} must be one of {choices} (or {cls.__name__} members), got {value!r}")

    def __str__(self) -> str:
        return str(self.value)


class AdmissionPolicy(_ParsedEnum):
    """What a full queue does with a new task."""

    #: Refuse the new task with ``QUEUE_FULL``; nothing queued changes.
    REJECT_NEW = "reject-new"
    #: Evict the least recently used job of the lowest priority present and report it.
    DROP_LRU = "drop-lru"
    #: Admit a task only when it would be next to be dequeued; never make it wait.
    FAIL_FAST = "fail-fast"


class Priority(_ParsedEnum):
    """Scheduling class: every INTERACTIVE job leaves before any BATCH job."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class RejectionReason(_ParsedEnum):
    """Why a well-formed task was refused (a ``Rejected`` result, never an exception)."""

    QUEUE_FULL = "QUEUE_FULL"
    INVALID_REQUEST = "INVALID_REQUEST"
    POLICY_VIOLATION = "POLICY_VIOLATION"
    QUEUE_CLOSED = "QUEUE_CLOSED"
    #: ``admit_only_feasible``: the task's predicted wait already exceeds its ``max_wait_ms``.
    DEADLINE_UNMEETABLE = "DEADLINE_UNMEETABLE"
