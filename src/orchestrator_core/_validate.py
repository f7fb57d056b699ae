"""Argument checks shared by both engines.

The engines do their fast checks inline; whenever a value is malformed they call
the matching function here, which raises the exception with its message. Every
message is therefore written once and is identical on both engines. Messages name
the parameter and the bad value. Nothing here touches a queue's state, so a
refused argument never changes anything.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable
from typing import Any, NoReturn

from ._types import AdmissionPolicy, Priority

__all__ = [
    "JOB_ID_MAX_LEN",
    "call_clock",
    "check_clock_value",
    "check_count",
    "check_feature_args",
    "check_job_id",
    "check_max_wait_ms",
    "check_prompt_tokens",
    "check_queue_args",
    "check_tenant",
    "check_timeout",
    "new_id_prefix",
    "raise_task_error",
]

JOB_ID_MAX_LEN = 128
ID_PREFIX_MAX_LEN = 32
_PREFIX_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_PREFIX_CHARS = frozenset(string.ascii_letters + string.digits + "_.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def new_id_prefix() -> str:
    """Ten random base-32 characters (50 bits): unique per queue without coordination."""
    bits = int.from_bytes(os.urandom(7), "little")
    return "".join(_PREFIX_ALPHABET[(bits >> (5 * i)) & 31] for i in range(10))


def check_job_id(job_id: object, param: str = "job_id") -> str:
    """Return ``job_id`` as an exact ``str`` or raise naming ``param``."""
    if not isinstance(job_id, str):
        raise TypeError(f"{param} must be a str, got {job_id!r} ({type(job_id).__name__})")
    if not job_id:
        raise ValueError(f"{param} must not be empty, got {job_id!r}")
    if len(job_id) > JOB_ID_MAX_LEN:
        raise ValueError(f"{param} must be at most {JOB_ID_MAX_LEN} characters, got {len(job_id)} ({job_id[:20]!r}...)")
    if not job_id.isprintable():
        raise ValueError(f"{param} must be printable (no control characters or line breaks), got {job_id!r}")
    # A str subclass could override __hash__/__eq__: the engines only ever see exact str.
    return job_id if type(job_id) is str else str.__str__(job_id)


def raise_task_error(
    model: object,
    max_tokens: object,
    session_id: object,
    priority: object,
    job_id: object,
) -> NoReturn:
    """Raise the error for the first malformed ``Task`` argument (called only when one is)."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a non-empty str, got {model!r}")
    if not model:
        raise ValueError(f"model must be a non-empty str, got {model!r}")
    if not _is_int(max_tokens):
        raise TypeError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if max_tokens <= 0:  # type: ignore[operator]
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if session_id is not None:
        if not isinstance(session_id, str):
            raise TypeError(f"session_id must be a non-empty str or None, got {session_id!r}")
        if not session_id:
            raise ValueError(f"session_id must be a non-empty str or None, got {session_id!r}")
    Priority.parse(priority, "priority")
    if job_id is not None:
        check_job_id(job_id)
    raise AssertionError("raise_task_error called with valid arguments")  # pragma: no cover


def check_tenant(tenant: object, param: str = "tenant") -> str:
    """A tenant name: the same rules as a job id (exact ``str``, 1 to 128 printable characters)."""
    return check_job_id(tenant, param)


def check_max_wait_ms(value: object, param: str = "max_wait_ms") -> float:
    """A deadline in milliseconds: a finite number > 0, returned as a float."""
    if not _is_real(value):
        raise TypeError(f"{param} must be a positive number of milliseconds or None, got {value!r}")
    ms = float(value)  # type: ignore[arg-type]
    if not (0.0 < ms < math.inf):  # also refuses nan
        raise ValueError(f"{param} must be a positive number of milliseconds or None, got {value!r}")
    return ms


def check_prompt_tokens(value: object, param: str = "prompt_tokens") -> int:
    """A token count of the prompt: an int >= 0."""
    if not _is_int(value):
        raise TypeError(f"{param} must be a non-negative int or None, got {value!r}")
    if value < 0:  # type: ignore[operator]
        raise ValueError(f"{param} must be a non-negative int or None, got {value!r}")
    return value  # type: ignore[return-value]


def _check_optional_count(value: object, param: str) -> int:
    """None (returned as 0: no bound) or a positive int below 2**62."""
    if value is None:
        return 0
    if not _is_int(value):
        raise TypeError(f"{param} must be a positive int or None, got {value!r}")
    if value <= 0:  # type: ignore[operator]
        raise ValueError(f"{param} must be a positive int or None, got {value!r}")
    if value >= 2**62:  # type: ignore[operator]
        raise ValueError(f"{param} must be below 2**62, got {value!r}")
    return value  # type: ignore[return-value]


def check_feature_args(
    max_wait_ms: object,
    admit_only_feasible: object,
    max_queued_per_tenant: object,
    max_queued_tokens: object,
) -> tuple[float | None, bool, int, int]:
    """Validate the deadline, fairness and budget options of ``Queue(...)`` (0 = no bound)."""
    wait = None if max_wait_ms is None else check_max_wait_ms(max_wait_ms)
    if type(admit_only_feasible) is not bool:
        raise TypeError(f"admit_only_feasible must be a bool, got {admit_only_feasible!r}")
    per_tenant = _check_optional_count(max_queued_per_tenant, "max_queued_per_tenant")
    tokens = _check_optional_count(max_queued_tokens, "max_queued_tokens")
    return wait, admit_only_feasible, per_tenant, tokens


def check_timeout(timeout: object, param: str = "timeout") -> float:
    """``None`` means wait forever (returned as -1.0); otherwise a finite number >= 0 of seconds."""
    if timeout is None:
        return -1.0
    if not _is_real(timeout):
        raise TypeError(f"{param} must be a number of seconds or None, got {timeout!r}")
    value = float(timeout)  # type: ignore[arg-type]
    if math.isnan(value) or value < 0:
        raise ValueError(f"{param} must be >= 0 seconds or None, got {timeout!r}")
    return value


def check_count(n: object, param: str = "max_jobs") -> int:
    """A positive int (a batch size)."""
    if not _is_int(n):
        raise TypeError(f"{param} must be a positive int, got {n!r}")
    if n <= 0:  # type: ignore[operator]
        raise ValueError(f"{param} must be a positive int, got {n!r}")
    return n  # type: ignore[return-value]


def check_queue_args(
    capacity: object,
    policy: object,
    pool_id: object,
    clock: object,
    max_tokens_limit: object,
    id_prefix: object,
) -> tuple[int, AdmissionPolicy, str, Callable[[], float] | None, int, str]:
    """Validate ``Queue(...)`` arguments; returns them normalised (limit 0 = none)."""
    if not _is_int(capacity):
        raise TypeError(f"capacity must be a positive int, got {capacity!r}")
    if capacity <= 0:  # type: ignore[operator]
        raise ValueError(f"capacity must be a positive int, got {capacity!r}")
    if capacity >= 2**62:  # type: ignore[operator]
        raise ValueError(f"capacity must be below 2**62, got {capacity!r}")
    policy_value = AdmissionPolicy.parse(policy, "policy")
    if not isinstance(pool_id, str) or not pool_id:
        raise ValueError(f"pool_id must be a non-empty str, got {pool_id!r}")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, or None, got {clock!r}")
    limit = 0
    if max_tokens_limit is not None:
        if not _is_int(max_tokens_limit):
            raise TypeError(f"max_tokens_limit must be a positive int or None, got {max_tokens_limit!r}")
        if max_tokens_limit <= 0:  # type: ignore[operator]
            raise ValueError(f"max_tokens_limit must be a positive int or None, got {max_tokens_limit!r}")
        limit = max_tokens_limit  # type: ignore[assignment]
    if id_prefix is None:
        prefix = new_id_prefix()
    else:
        if not isinstance(id_prefix, str) or not id_prefix or len(id_prefix) > ID_PREFIX_MAX_LEN:
            raise ValueError(f"id_prefix must be a str of 1 to {ID_PREFIX_MAX_LEN} characters, got {id_prefix!r}")
        if not set(id_prefix) <= _PREFIX_CHARS:
            raise ValueError(f"id_prefix may only contain letters, digits, '_' and '.', got {id_prefix!r}")
        prefix = str.__str__(id_prefix)
    return capacity, policy_value, str.__str__(pool_id), clock, limit, prefix  # type: ignore[return-value]


def call_clock(clock: Callable[[], Any]) -> float:
    """Read an injected clock; its value must be a finite number of seconds."""
    value = clock()
    if type(value) is float and value - value == 0.0:  # finite: the common case, fast
        return value
    return check_clock_value(value)


def check_clock_value(value: object) -> float:
    """A clock reading as a float, or a TypeError naming ``clock()``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"clock() must return a finite number of seconds, got {value!r}")
    return float(value)
