# Type stub of the compiled engine (_core_c.pyx). The pure twin _core_py.py is the annotated
# specification: every public signature here mirrors it. Checked against the built module with
# `python -m mypy.stubtest orchestrator_core._core_c --allowlist .ci/stubtest-allowlist.txt`.
"""Compiled engine (Cython). Same behaviour as ``orchestrator_core._core_py``."""

from collections.abc import Callable
from typing import Any, Final, final

from typing_extensions import disjoint_base

from ._stats import QueueMetrics
from ._types import AdmissionPolicy, Priority, RejectionReason

__all__ = ["Accepted", "Job", "Queue", "Rejected", "Task"]

@final
class Task:
    """A request to run: what the front end admits.

    ``Task(model, max_tokens, session_id=None, *, priority=Priority.INTERACTIVE,
    job_id=None, payload=None, tenant=None, max_wait_ms=None, prompt_tokens=None)``.
    ``job_id`` lets the caller choose the id (it must not be queued already); ``payload`` is
    carried untouched; ``tenant`` names who the work is for (round-robin fairness and
    per-tenant caps); ``max_wait_ms`` is the longest the job may wait in the queue before it
    expires; ``prompt_tokens`` counts, with ``max_tokens``, against ``max_queued_tokens``.
    Immutable.
    """

    __match_args__ = ("model", "max_tokens", "session_id")

    def __init__(
        self,
        model: str,
        max_tokens: int,
        session_id: str | None = None,
        *,
        priority: Priority | str = ...,
        job_id: str | None = None,
        payload: Any = None,
        tenant: str | None = None,
        max_wait_ms: float | None = None,
        prompt_tokens: int | None = None,
    ) -> None: ...
    @property
    def model(self) -> str:
        """The model (or engine) the task is for."""
    @property
    def max_tokens(self) -> int:
        """Upper bound on generated tokens."""
    @property
    def session_id(self) -> str | None:
        """Conversation the task belongs to (for affinity), or None."""
    @property
    def priority(self) -> Priority:
        """Scheduling class."""
    @property
    def job_id(self) -> str | None:
        """Caller-chosen job id, or None to let the queue make one."""
    @property
    def payload(self) -> Any:
        """Anything the caller wants carried along with the task."""
    @property
    def tenant(self) -> str | None:
        """Who the work is for (round-robin fairness, per-tenant caps), or None."""
    @property
    def max_wait_ms(self) -> float | None:
        """Longest wait in the queue before the job expires, or None (the queue's default)."""
    @property
    def prompt_tokens(self) -> int | None:
        """Tokens of the prompt (counted against ``max_queued_tokens``), or None."""
    @property
    def tokens(self) -> int:
        """``max_tokens + prompt_tokens``: what the task counts against ``max_queued_tokens``."""

@final
class Job:
    """A queued task as it leaves the queue (dequeued, drained, evicted or expired).

    ``wait_ms`` is the time it spent queued, fixed when it left; ``enqueued_at`` is in
    seconds on the queue's clock.
    """

    __match_args__ = ("job_id", "task")

    def __init__(self, job_id: str, task: Task, enqueued_at: float, wait_ms: float) -> None: ...
    @property
    def job_id(self) -> str:
        """The job's id (the caller's or one the queue made)."""
    @property
    def task(self) -> Task:
        """The admitted task."""
    @property
    def priority(self) -> Priority:
        """The task's priority."""
    @property
    def enqueued_at(self) -> float:
        """When it was admitted, in seconds on the queue's clock."""
    @property
    def wait_ms(self) -> float:
        """Milliseconds it spent queued."""

@final
class Accepted:
    """The task was admitted: ``job_id``, its ``position`` (0 = next), the job it ``evicted``
    under DROP_LRU (or None) and an advisory ``eta_ms``. Immutable; ``match Accepted(job_id=..)``.

    ``evicted`` is the first evicted job; ``evicted_all`` is every job evicted to make room
    (more than one when a token budget needed it), in eviction order.
    """

    __match_args__ = ("job_id", "position", "evicted")
    accepted: Final = True

    def __init__(
        self,
        job_id: str,
        position: int,
        evicted: Job | None = None,
        *,
        eta_ms: float | None = None,
        evicted_all: tuple[Job, ...] | None = None,
    ) -> None: ...
    @property
    def job_id(self) -> str:
        """The admitted job's id."""
    @property
    def position(self) -> int:
        """Jobs that would be dequeued before this one at admission (0 = next)."""
    @property
    def evicted(self) -> Job | None:
        """The (first) job evicted to make room (DROP_LRU), to be reported to its client."""
    @property
    def evicted_all(self) -> tuple[Job, ...]:
        """Every job evicted to make room, in eviction order (empty when none)."""
    @property
    def eta_ms(self) -> float | None:
        """Advisory: milliseconds until the jobs ahead drain at the measured dequeue rate
        (``position`` over the rate of the metrics window), or None when nothing was dequeued
        in the window."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Rejected:
    """The task was refused: ``reason``, an advisory ``retry_after_ms``, whether it is
    ``retriable``, the ``policy`` in force and a human ``message``. Immutable."""

    __match_args__ = ("reason", "retry_after_ms")
    accepted: Final = False

    def __init__(
        self,
        reason: RejectionReason | str,
        retry_after_ms: int,
        policy: AdmissionPolicy | str,
        message: str,
    ) -> None: ...
    @property
    def reason(self) -> RejectionReason:
        """Why the task was refused."""
    @property
    def retry_after_ms(self) -> int:
        """Advisory back-off in milliseconds (0 when retrying cannot help)."""
    @property
    def retriable(self) -> bool:
        """True when the same task may be admitted later (``QUEUE_FULL``, ``DEADLINE_UNMEETABLE``)."""
    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy of the queue that refused."""
    @property
    def message(self) -> str:
        """A sentence for humans and logs."""
    def to_http(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``(status, headers, body)`` for an HTTP front (see ``orchestrator_core.http``)."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@disjoint_base
class Queue:
    """A bounded admission queue: INTERACTIVE before BATCH; within a priority, round robin
    over tenants and FIFO within a tenant (plain FIFO when no task names a tenant).

    ``Queue(capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default", clock=None,
    max_tokens_limit=None, id_prefix=None, max_wait_ms=None, admit_only_feasible=False,
    max_queued_per_tenant=None, max_queued_tokens=None)``. Every method is atomic and
    thread-safe; ``enqueue`` returns ``Accepted`` or ``Rejected`` and waits for room only
    when asked to (``wait=``).

    ``max_wait_ms`` is the deadline of tasks that set none: a job that has waited longer is
    never dequeued; it expires and is handed over by ``take_expired()``. With
    ``admit_only_feasible`` a task whose predicted wait already exceeds its deadline is
    refused (``DEADLINE_UNMEETABLE``). ``max_queued_per_tenant`` caps each named tenant's
    queued jobs (``POLICY_VIOLATION``); ``max_queued_tokens`` bounds the queued jobs' tokens
    (``Task.tokens``) alongside the job count, and the policy applies to whichever bound is hit.
    """

    def __init__(
        self,
        capacity: int,
        policy: AdmissionPolicy | str = ...,
        *,
        pool_id: str = "default",
        clock: Callable[[], float] | None = None,
        max_tokens_limit: int | None = None,
        id_prefix: str | None = None,
        max_wait_ms: float | None = None,
        admit_only_feasible: bool = False,
        max_queued_per_tenant: int | None = None,
        max_queued_tokens: int | None = None,
    ) -> None: ...
    @classmethod
    def builder(cls) -> Any:
        """A fluent ``QueueBuilder`` for this engine's ``Queue``."""
    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy."""
    @property
    def pool_id(self) -> str:
        """The worker pool this queue feeds (a label in metrics)."""
    @property
    def id_prefix(self) -> str:
        """Prefix of the job ids this queue makes (random unless chosen)."""
    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
    @property
    def max_wait_ms(self) -> float | None:
        """Deadline of the tasks that set no ``max_wait_ms`` (None: they never expire)."""
    @property
    def admit_only_feasible(self) -> bool:
        """Whether a task whose predicted wait exceeds its deadline is refused at once."""
    @property
    def max_queued_per_tenant(self) -> int | None:
        """Most jobs a named tenant may have queued (None: no cap)."""
    @property
    def max_queued_tokens(self) -> int | None:
        """Bound on the queued jobs' ``Task.tokens`` (None: no bound)."""
    def capacity(self) -> int:
        """The most jobs the queue holds."""
    def depth(self) -> int:
        """Jobs queued now (overdue jobs expire first)."""
    def __len__(self) -> int: ...
    def enqueue(self, task: Task, wait: float | None = 0.0) -> Accepted | Rejected:
        """Admit ``task`` or refuse it.

        Returns ``Accepted(job_id, position, evicted)`` or ``Rejected(reason, ...)``; raises
        ``TypeError`` when ``task`` is not a ``Task``. ``wait=0`` (default) never blocks; a
        number of seconds (or None: until room or close) first waits for room when the queue
        would refuse the task with a retriable reason (full, or its deadline unmeetable),
        without holding the lock, then decides by the policy (DROP_LRU evicts only then).
        """
    def _try_admit(self, task: Task) -> Accepted | Rejected | None:
        """One admission attempt as a waiting ``enqueue(task, wait=...)`` makes before its
        last (for ``AsyncQueue.put``): Accepted (never evicts), a non-retriable Rejected
        (counted), or None when the queue would refuse ``task`` with a retriable reason (full,
        fail-fast ahead, deadline unmeetable): then nothing is counted, evicted or registered."""
    def dequeue(self, timeout: float | None = 0.0) -> Job | None:
        """The next job, or None: INTERACTIVE first; within a priority round robin over
        tenants, FIFO within a tenant. An overdue job is never handed out (it expires).

        ``timeout=0`` (default) never waits; a number waits up to that many seconds;
        ``None`` waits until a job arrives or the queue is closed and empty. A wait never
        holds the engine's lock and can be interrupted (KeyboardInterrupt).
        """
    def dequeue_many(self, max_jobs: int, timeout: float | None = 0.0) -> list[Job]:
        """Up to ``max_jobs`` jobs in dequeue order, taken under one lock acquisition.

        ``timeout`` is as for ``dequeue`` and applies to the first job only.
        """
    def take_expired(self) -> list[Job]:
        """The jobs that expired since the last call (earliest deadline first), to be reported
        to their clients. An expired job waited longer than its ``max_wait_ms`` (the task's,
        else the queue's); its ``wait_ms`` is how long it had waited when it expired. Expired
        jobs free their place at once but are held here until taken: call this regularly."""
    def drain(self) -> list[Job]:
        """Remove and return every queued job in dequeue order (counted as drained)."""
    def close(self) -> None:
        """Refuse further enqueues (``QUEUE_CLOSED``) and wake every blocked consumer and
        producer.

        Queued jobs can still be dequeued or drained. Idempotent.
        """
    def cancel(self, job_id: str) -> bool:
        """Remove a queued job; False if it is not queued. Idempotent."""
    def touch(self, job_id: str) -> bool:
        """Mark a queued job as just used (DROP_LRU evicts it last in its tenant); False if not queued."""
    def position(self, job_id: str) -> int | None:
        """Jobs that would be dequeued before this one at admission (0 = next)."""
    def eta_ms(self, job_id: str) -> float | None:
        """Advisory: milliseconds until the jobs ahead drain at the measured dequeue rate
        (``position`` over the rate of the metrics window), or None when nothing was dequeued
        in the window."""
    def __contains__(self, job_id: object, /) -> bool: ...
    def snapshot(self, priority: Priority | str | None = None) -> list[str]:
        """Queued job ids in dequeue order (only one class when ``priority`` is given)."""
    def lru_order(self, priority: Priority | str) -> list[str]:
        """Job ids of one class in the order DROP_LRU would evict them: least recently used
        first (enqueue and ``touch`` make a job recent); with tenants, each eviction takes
        from the tenant with the most jobs in the class (ties: the latest in the round robin)."""
    def metrics(self) -> QueueMetrics:
        """An immutable snapshot of counters, rates and wait percentiles (O(1) in depth,
        O(m) in the tenants with queued work)."""

def _set_release_gil(flag: bool) -> None:
    """Benchmark hook: release the GIL around the short locked operations (default False)."""

def _get_release_gil() -> bool:
    """Whether enqueue/dequeue release the GIL around their locked part."""
