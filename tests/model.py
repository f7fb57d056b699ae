"""A tiny reference model of the admission queue: plain lists, obviously correct, slow.

It is the third party of the differential state machine: whatever the two engines do
must also be what this model says. It knows nothing of ring buffers or hash tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator_core._stats import RETRY_AFTER_DEFAULT_MS, RETRY_AFTER_MAX_MS, RETRY_AFTER_MIN_MS, WINDOW_S

REASONS = ("QUEUE_FULL", "INVALID_REQUEST", "POLICY_VIOLATION", "QUEUE_CLOSED")


@dataclass
class ModelJob:
    job_id: str
    prio: int
    max_tokens: int
    enqueued_at: float


@dataclass
class Model:
    capacity: int
    policy: str
    prefix: str = "q"
    max_tokens_limit: int = 0
    created_at: float = 0.0
    classes: tuple[list[ModelJob], list[ModelJob]] = field(default_factory=lambda: ([], []))
    lru: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    next_id: int = 1
    closed: bool = False
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    evicted: int = 0
    cancelled: int = 0
    dequeued: int = 0
    drained: int = 0
    dequeue_times: list[float] = field(default_factory=list)

    # -- queries ------------------------------------------------------------------------
    def depth(self) -> int:
        return len(self.classes[0]) + len(self.classes[1])

    def find(self, job_id: str) -> ModelJob | None:
        for c in self.classes:
            for j in c:
                if j.job_id == job_id:
                    return j
        return None

    def order(self) -> list[ModelJob]:
        return self.classes[0] + self.classes[1]

    def position(self, job_id: str) -> int | None:
        for i, j in enumerate(self.order()):
            if j.job_id == job_id:
                return i
        return None

    def retry_after(self, n: int, now: float) -> int:
        cur = math.floor(now)
        lo = max(cur - WINDOW_S, math.floor(self.created_at))
        deq = sum(1 for t in self.dequeue_times if lo <= math.floor(t) < cur)
        win = cur - max(float(cur - WINDOW_S), self.created_at)
        if deq == 0 or win <= 0:
            return RETRY_AFTER_DEFAULT_MS
        return min(RETRY_AFTER_MAX_MS, max(RETRY_AFTER_MIN_MS, math.ceil(n * 1000.0 * win / deq)))

    # -- operations ---------------------------------------------------------------------
    def _remove(self, job: ModelJob) -> None:
        self.classes[job.prio].remove(job)
        self.lru[job.prio].remove(job.job_id)

    def own_counter(self, job_id: str) -> int:
        head = self.prefix + "-"
        if job_id.startswith(head):
            digits = job_id[len(head) :]
            if 0 < len(digits) <= 16 and digits[0] != "0" and all(c in "0123456789abcdef" for c in digits):
                return int(digits, 16)
        return 0

    def enqueue(self, prio: int, max_tokens: int, job_id: str | None, now: float) -> tuple[str, object, object, object]:
        """("accepted", job_id, position, evicted ModelJob|None) or ("rejected", reason, retry_ms, ahead)."""
        if self.closed:
            return self._refuse("QUEUE_CLOSED", 0, 0)
        if self.max_tokens_limit and max_tokens > self.max_tokens_limit:
            return self._refuse("POLICY_VIOLATION", 0, 0)
        if job_id is not None and self.find(job_id) is not None:
            return self._refuse("INVALID_REQUEST", 0, 0)
        depth = self.depth()
        victim = None
        if self.policy == "fail-fast":
            ahead = len(self.classes[0]) if prio == 0 else depth
            if ahead:
                return self._refuse("QUEUE_FULL", self.retry_after(ahead, now), ahead)
            if depth >= self.capacity:
                return self._refuse("QUEUE_FULL", self.retry_after(1, now), 0)
        elif depth >= self.capacity:
            if self.policy == "drop-lru" and (self.classes[1] or prio == 0):
                cls = 1 if self.classes[1] else 0
                victim_id = self.lru[cls][0]
                victim = next(j for j in self.classes[cls] if j.job_id == victim_id)
                self._remove(victim)
                self.evicted += 1
            else:
                return self._refuse("QUEUE_FULL", self.retry_after(1, now), 0)
        if job_id is None:
            job_id = f"{self.prefix}-{self.next_id:x}"
            self.next_id += 1
        else:
            own = self.own_counter(job_id)
            if own >= self.next_id:
                self.next_id = own + 1
        position = len(self.classes[0]) if prio == 0 else depth - (1 if victim else 0)
        job = ModelJob(job_id, prio, max_tokens, now)
        self.classes[prio].append(job)
        self.lru[prio].append(job_id)
        self.accepted += 1
        return ("accepted", job_id, position, victim)

    def _refuse(self, reason: str, retry_ms: int, ahead: int) -> tuple[str, object, object, object]:
        self.rejected[reason] += 1
        return ("rejected", reason, retry_ms, ahead)

    def dequeue(self, now: float) -> ModelJob | None:
        for c in self.classes:
            if c:
                job = c[0]
                self._remove(job)
                self.dequeued += 1
                self.dequeue_times.append(now)
                return job
        return None

    def cancel(self, job_id: str) -> bool:
        job = self.find(job_id)
        if job is None:
            return False
        self._remove(job)
        self.cancelled += 1
        return True

    def touch(self, job_id: str) -> bool:
        job = self.find(job_id)
        if job is None:
            return False
        self.lru[job.prio].remove(job_id)
        self.lru[job.prio].append(job_id)
        return True

    def drain(self) -> list[ModelJob]:
        jobs = self.order()
        for j in jobs:
            self._remove(j)
        self.drained += len(jobs)
        return jobs
