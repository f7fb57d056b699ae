"""A tiny reference model of the admission queue: plain lists, obviously correct, slow.

It is the third party of the differential state machine: whatever the two engines do
must also be what this model says. It knows nothing of ring buffers, hash tables,
Fenwick trees or deadline lanes:

* each priority class is a literal round robin: a list of the tenants with queued work
  (the next to be served first) and a FIFO list per tenant (``None`` is the default
  tenant). Serving a tenant moves it to the back if it still has work; a tenant that gets
  work joins at the back;
* positions come from simulating that round robin; DROP_LRU's victim order from simulating
  evictions;
* expiry scans every queued job before each operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator_core._stats import RETRY_AFTER_DEFAULT_MS, RETRY_AFTER_MAX_MS, RETRY_AFTER_MIN_MS, WINDOW_S

REASONS = ("QUEUE_FULL", "INVALID_REQUEST", "POLICY_VIOLATION", "QUEUE_CLOSED", "DEADLINE_UNMEETABLE")


@dataclass
class ModelJob:
    job_id: str
    prio: int
    max_tokens: int
    enqueued_at: float
    tenant: str | None = None
    tokens: int = 0
    max_wait_ms: float | None = None
    arrival: int = 0
    left_at: float = 0.0


def _rotation() -> tuple[list[str | None], list[str | None]]:
    return ([], [])


def _fifos() -> tuple[dict[str | None, list[ModelJob]], dict[str | None, list[ModelJob]]]:
    return ({}, {})


def _lrus() -> tuple[dict[str | None, list[str]], dict[str | None, list[str]]]:
    return ({}, {})


@dataclass
class Model:
    capacity: int
    policy: str
    prefix: str = "q"
    max_tokens_limit: int = 0
    created_at: float = 0.0
    max_wait_ms: float | None = None
    admit_only_feasible: bool = False
    max_queued_per_tenant: int = 0
    max_queued_tokens: int = 0
    rotation: tuple[list[str | None], list[str | None]] = field(default_factory=_rotation)
    fifos: tuple[dict[str | None, list[ModelJob]], dict[str | None, list[ModelJob]]] = field(default_factory=_fifos)
    lru: tuple[dict[str | None, list[str]], dict[str | None, list[str]]] = field(default_factory=_lrus)
    expired_jobs: list[ModelJob] = field(default_factory=list)
    next_id: int = 1
    arrivals: int = 0
    closed: bool = False
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    evicted: int = 0
    cancelled: int = 0
    dequeued: int = 0
    drained: int = 0
    expired: int = 0
    dequeue_times: list[float] = field(default_factory=list)

    # -- queries ------------------------------------------------------------------------
    def jobs(self) -> list[ModelJob]:
        return [j for fifos in self.fifos for fifo in fifos.values() for j in fifo]

    def depth(self) -> int:
        return len(self.jobs())

    def class_depth(self, prio: int) -> int:
        return sum(len(f) for f in self.fifos[prio].values())

    def queued_tokens(self) -> int:
        return sum(j.tokens for j in self.jobs())

    def tenant_count(self, tenant: str) -> int:
        return sum(len(self.fifos[p].get(tenant, [])) for p in (0, 1))

    def find(self, job_id: str) -> ModelJob | None:
        for j in self.jobs():
            if j.job_id == job_id:
                return j
        return None

    def class_order(self, prio: int) -> list[ModelJob]:
        """Dequeue order of one class: serve the front tenant, move it to the back if it has more."""
        rotation = list(self.rotation[prio])
        fifos = {t: list(f) for t, f in self.fifos[prio].items()}
        out = []
        while rotation:
            t = rotation.pop(0)
            out.append(fifos[t].pop(0))
            if fifos[t]:
                rotation.append(t)
        return out

    def order(self) -> list[ModelJob]:
        return self.class_order(0) + self.class_order(1)

    def position(self, job_id: str) -> int | None:
        for i, j in enumerate(self.order()):
            if j.job_id == job_id:
                return i
        return None

    def position_if_added(self, prio: int, tenant: str | None) -> int:
        """The position a new job of ``tenant`` would get (added, measured, taken back)."""
        probe = ModelJob("\x00probe", prio, 1, 0.0, tenant)
        self._add(probe)
        pos = self.position(probe.job_id)
        self._remove(probe)
        assert pos is not None
        return pos

    def rate(self, now: float) -> tuple[int, float]:
        """Dequeues in the window (the completed seconds of the last WINDOW_S) and its length."""
        cur = math.floor(now)
        lo = max(cur - WINDOW_S, math.floor(self.created_at))
        deq = sum(1 for t in self.dequeue_times if lo <= math.floor(t) < cur)
        win = cur - max(float(cur - WINDOW_S), self.created_at)
        return deq, win if win > 0 else 0.0

    def retry_after(self, n: int, now: float) -> int:
        deq, win = self.rate(now)
        if deq == 0 or win <= 0:
            return RETRY_AFTER_DEFAULT_MS
        return min(RETRY_AFTER_MAX_MS, max(RETRY_AFTER_MIN_MS, math.ceil(n * 1000.0 * win / deq)))

    def eta(self, position: int, now: float) -> float | None:
        """``position`` times the milliseconds per job at the measured rate."""
        deq, win = self.rate(now)
        if not deq:
            return None
        return position * (1000.0 * win / deq)

    def eviction_order(self, prio: int) -> list[ModelJob]:
        """Victims in order if DROP_LRU evicted the whole class: the tenant with the most
        jobs (ties: the latest in the round robin), its least recently used job."""
        rotation = list(self.rotation[prio])
        lrus = {t: list(ids) for t, ids in self.lru[prio].items()}
        by_id = {j.job_id: j for f in self.fifos[prio].values() for j in f}
        out = []
        while rotation:
            best = max(range(len(rotation)), key=lambda i: (len(lrus[rotation[i]]), i))
            t = rotation[best]
            out.append(by_id[lrus[t].pop(0)])
            if not lrus[t]:
                rotation.pop(best)
        return out

    # -- operations ---------------------------------------------------------------------
    def _add(self, job: ModelJob) -> None:
        fifos = self.fifos[job.prio]
        if job.tenant not in fifos:
            fifos[job.tenant] = []
            self.lru[job.prio][job.tenant] = []
            self.rotation[job.prio].append(job.tenant)
        fifos[job.tenant].append(job)
        self.lru[job.prio][job.tenant].append(job.job_id)

    def _remove(self, job: ModelJob) -> None:
        fifos = self.fifos[job.prio]
        fifos[job.tenant].remove(job)
        self.lru[job.prio][job.tenant].remove(job.job_id)
        if not fifos[job.tenant]:
            del fifos[job.tenant]
            del self.lru[job.prio][job.tenant]
            self.rotation[job.prio].remove(job.tenant)

    def sweep(self, now: float) -> None:
        """Expire every job that has waited longer than its max_wait_ms, earliest deadline first."""
        overdue = [
            j for j in self.jobs() if j.max_wait_ms is not None and (now - j.enqueued_at) * 1000.0 > j.max_wait_ms
        ]
        overdue.sort(key=lambda j: (j.enqueued_at + j.max_wait_ms / 1000.0, j.max_wait_ms, j.arrival))  # type: ignore[operator]
        for j in overdue:
            self._remove(j)
            j.left_at = now
            self.expired_jobs.append(j)
            self.expired += 1

    def own_counter(self, job_id: str) -> int:
        head = self.prefix + "-"
        if job_id.startswith(head):
            digits = job_id[len(head) :]
            if 0 < len(digits) <= 16 and digits[0] != "0" and all(c in "0123456789abcdef" for c in digits):
                return int(digits, 16)
        return 0

    def enqueue(
        self,
        prio: int,
        max_tokens: int,
        job_id: str | None,
        now: float,
        *,
        tenant: str | None = None,
        max_wait_ms: float | None = None,
        prompt_tokens: int | None = None,
    ) -> tuple[object, ...]:
        """("accepted", job_id, position, [evicted ModelJob], eta) or ("rejected", reason, retry_ms, ahead)."""
        self.sweep(now)
        tokens = max_tokens + (prompt_tokens or 0)
        mw = max_wait_ms if max_wait_ms is not None else self.max_wait_ms
        budget = self.max_queued_tokens
        if self.closed:
            return self._refuse("QUEUE_CLOSED", 0, 0)
        if self.max_tokens_limit and max_tokens > self.max_tokens_limit:
            return self._refuse("POLICY_VIOLATION", 0, 0)
        if budget and tokens > budget:
            return self._refuse("POLICY_VIOLATION", 0, 0)
        if job_id is not None and self.find(job_id) is not None:
            return self._refuse("INVALID_REQUEST", 0, 0)
        cap = self.max_queued_per_tenant
        if tenant is not None and cap and self.tenant_count(tenant) >= cap:
            return self._refuse("POLICY_VIOLATION", 0, 0)
        position = self.position_if_added(prio, tenant)
        depth = self.depth()
        full = depth >= self.capacity or bool(budget and self.queued_tokens() + tokens > budget)
        if self.policy == "fail-fast":
            if position:
                return self._refuse("QUEUE_FULL", self.retry_after(position, now), position)
            if full:
                return self._refuse("QUEUE_FULL", self.retry_after(1, now), 0)
        elif full:
            if self.policy != "drop-lru":
                return self._refuse("QUEUE_FULL", self.retry_after(1, now), 0)
            evictable = [j for j in self.jobs() if j.prio == 1 or prio == 0]
            if depth - len(evictable) >= self.capacity or (
                budget and self.queued_tokens() - sum(j.tokens for j in evictable) + tokens > budget
            ):
                return self._refuse("QUEUE_FULL", self.retry_after(1, now), 0)
        if self.admit_only_feasible and mw is not None and position:
            deq, win = self.rate(now)
            if deq and position * (1000.0 * win / deq) > mw:
                n = max(1, position - math.floor(mw * deq / (1000.0 * win)))
                return self._refuse("DEADLINE_UNMEETABLE", self.retry_after(n, now), position)
        victims = []
        while full and (self.depth() >= self.capacity or (budget and self.queued_tokens() + tokens > budget)):
            victim = self.eviction_order(1 if self.class_depth(1) else 0)[0]
            self._remove(victim)
            victims.append(victim)
            self.evicted += 1
        if job_id is None:
            job_id = f"{self.prefix}-{self.next_id:x}"
            self.next_id += 1
        else:
            own = self.own_counter(job_id)
            if own >= self.next_id:
                self.next_id = own + 1
        self.arrivals += 1
        job = ModelJob(job_id, prio, max_tokens, now, tenant, tokens, mw, self.arrivals)
        self._add(job)
        self.accepted += 1
        position = self.position(job_id)  # type: ignore[assignment]
        return ("accepted", job_id, position, victims, self.eta(position, now))

    def _refuse(self, reason: str, retry_ms: int, ahead: int) -> tuple[object, ...]:
        self.rejected[reason] += 1
        return ("rejected", reason, retry_ms, ahead)

    def dequeue(self, now: float) -> ModelJob | None:
        self.sweep(now)
        for prio in (0, 1):
            rotation = self.rotation[prio]
            if rotation:
                tenant = rotation[0]
                job = self.fifos[prio][tenant][0]
                self._remove(job)  # if the tenant still has work it is now at the back...
                if tenant in self.fifos[prio]:
                    rotation.remove(tenant)
                    rotation.append(tenant)  # ...whether or not it was already there
                self.dequeued += 1
                self.dequeue_times.append(now)
                return job
        return None

    def cancel(self, job_id: str, now: float) -> bool:
        self.sweep(now)
        job = self.find(job_id)
        if job is None:
            return False
        self._remove(job)
        self.cancelled += 1
        return True

    def touch(self, job_id: str, now: float) -> bool:
        self.sweep(now)
        job = self.find(job_id)
        if job is None:
            return False
        ids = self.lru[job.prio][job.tenant]
        ids.remove(job_id)
        ids.append(job_id)
        return True

    def drain(self, now: float) -> list[ModelJob]:
        self.sweep(now)
        jobs = self.order()
        for j in jobs:
            self._remove(j)
        self.drained += len(jobs)
        return jobs

    def take_expired(self, now: float) -> list[ModelJob]:
        self.sweep(now)
        out, self.expired_jobs = self.expired_jobs, []
        return out
