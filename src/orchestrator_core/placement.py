"""Placement: choose the worker pool that runs an admitted job.

``place(job, pools, affinity=None)`` is a pure function of its arguments (it only reads ``affinity``), so a decision
can be logged with its inputs and replayed. It makes one pass over ``pools`` (linear time) and returns ``Assigned`` or
``NoCapacity``; malformed input raises ``TypeError``/``ValueError`` naming the field and the value.

Candidates
    A pool is a *candidate* when its ``engine`` equals the job's ``model`` (exact, case-sensitive string equality:
    ``PoolSnapshot.engine`` names what the pool serves, e.g. ``"llama-3-8b"``). Other pools are ignored and not
    counted in ``candidates_total``.

Feasibility (checked in this order; an infeasible candidate is classified by the first check it fails)
    1. ``max_context_tokens >= job.required_context_tokens``          else ``INSUFFICIENT_CTX``
    2. ``job.required_extensions <= supported_extensions``            else ``EXTENSIONS_UNSATISFIED``
    3. ``ready``                                                      else ``POOL_UNREADY``
    4. ``slots_free >= 1``                                            else ``NO_CAPACITY``
    5. ``vram_free_bytes >= job.estimated_kv_bytes``                  else ``INSUFFICIENT_VRAM``

    The checks run from the permanent (this pool can never run this job) to the transient (it could in a moment).
    When no candidate is feasible, ``NoCapacity.reason`` is the class of the candidate that got furthest down that
    list, i.e. the *latest* reason in the order above; with no candidate at all it is ``NO_CAPACITY``. So
    ``INSUFFICIENT_CTX`` or ``EXTENSIONS_UNSATISFIED`` mean no pool of this fleet can ever take the job, while the
    later reasons mean retrying may succeed.

Choice among feasible candidates (a total order, independent of the order of ``pools`` and of hash seeds)
    1. Session affinity: if the job has a ``session_id`` and ``affinity`` maps it to a feasible pool, that pool wins
       (``kv_warm=True``). If the mapped pool is missing or infeasible, the job fails over to the rule below and the
       result says so (``kv_warm=False``, ``previous_pool_id`` set).
    2. If every feasible pool has performance hints: the smallest predicted end time,
       ``queue_wait_ms + first_token_latency_ms + expected_output_tokens * 1000 / tokens_per_second``.
    3. Otherwise (and to break exact ties of rule 2): the most free VRAM after the job
       (``vram_free_bytes - estimated_kv_bytes``), then the fewest busy slots (``slots_total - slots_free``), then the
       lexicographically smallest ``pool_id`` (code-point order). Pool ids are unique, so this order is total.

``job.priority`` is carried for logging and does not influence placement.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator_core._types import Priority
from orchestrator_core.affinity import SessionAffinity

__all__ = [
    "Assigned",
    "JobSpec",
    "NoCapacity",
    "NoCapacityReason",
    "PlacementRule",
    "PoolSnapshot",
    "place",
]


class NoCapacityReason(str, enum.Enum):
    """Why no pool could take a job; see the module docstring for which reason wins when several apply."""

    #: No free slot on the best candidate, or no pool serves the job's model at all (``candidates_total == 0``).
    NO_CAPACITY = "NO_CAPACITY"
    #: The best candidate is not ready (starting, draining or unhealthy).
    POOL_UNREADY = "POOL_UNREADY"
    #: No candidate supports the job's context length.
    INSUFFICIENT_CTX = "INSUFFICIENT_CTX"
    #: No candidate with enough context supports every required extension.
    EXTENSIONS_UNSATISFIED = "EXTENSIONS_UNSATISFIED"
    #: The best candidate has a free slot but not enough free VRAM for the job's KV cache.
    INSUFFICIENT_VRAM = "INSUFFICIENT_VRAM"

    def __str__(self) -> str:
        return str(self.value)


class PlacementRule(str, enum.Enum):
    """Which rule of the documented order chose the pool of an ``Assigned`` result."""

    #: The session's pool from the affinity map was feasible.
    SESSION_AFFINITY = "session-affinity"
    #: Every feasible pool had performance hints; the smallest predicted end time won.
    PREDICTED_END_TIME = "predicted-end-time"
    #: Most free VRAM after the job, then fewest busy slots, then smallest pool id.
    MOST_FREE_VRAM = "most-free-vram"

    def __str__(self) -> str:
        return str(self.value)


# Feasibility stages in check order; a NoCapacity reports the latest stage any candidate reached.
_STAGE_REASONS = (
    NoCapacityReason.INSUFFICIENT_CTX,
    NoCapacityReason.EXTENSIONS_UNSATISFIED,
    NoCapacityReason.POOL_UNREADY,
    NoCapacityReason.NO_CAPACITY,
    NoCapacityReason.INSUFFICIENT_VRAM,
)


# -- validation helpers --------------------------------------------------------------------------------------------


def _check_id(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{param} must be a str, got {value!r} ({type(value).__name__})")
    if not value or value.isspace():
        raise ValueError(f"{param} must be a non-empty, non-blank str, got {value!r}")
    # A str subclass could override __hash__/__eq__/__lt__; ids are compared and hashed as exact str.
    return value if type(value) is str else str.__str__(value)


def _check_count(value: object, param: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{param} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{param} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_real(value: object, param: str, *, positive: bool) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{param} must be an int or float, got {value!r} ({type(value).__name__})")
    bound = "> 0" if positive else ">= 0"
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{param} must be finite and {bound}, got {value!r}")
    return float(value)


def _check_bool(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{param} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def _check_extensions(value: object, param: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (frozenset, set, list, tuple)):
        raise TypeError(
            f"{param} must be a frozenset, set, list or tuple of str, got {value!r} ({type(value).__name__})"
        )
    return frozenset(_check_id(item, f"{param} item") for item in value)


def _set(instance: object, name: str, value: object) -> None:
    # Frozen dataclasses: __post_init__ stores normalised values through object.__setattr__.
    object.__setattr__(instance, name, value)


# -- value types ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSnapshot:
    """The state of one worker pool at decision time (all keyword-only).

    ``engine`` names what the pool serves and is matched exactly against ``JobSpec.model``. Slots and VRAM come as
    total/free pairs with ``0 <= free <= total``. ``supported_extensions`` accepts a frozenset, set, list or tuple of
    str and is stored as a frozenset. The performance hints are optional: ``tokens_per_second`` (per-stream decode
    rate, > 0) and ``first_token_latency_ms`` (>= 0) must be given together; ``queue_wait_ms`` (>= 0, default 0: a
    feasible pool has a free slot) is the expected wait before the job starts and is used only with the other two.
    """

    pool_id: str
    engine: str
    ready: bool
    slots_total: int
    slots_free: int
    vram_total_bytes: int
    vram_free_bytes: int
    max_context_tokens: int
    supported_extensions: frozenset[str] = frozenset()
    tokens_per_second: float | None = None
    first_token_latency_ms: float | None = None
    queue_wait_ms: float = 0.0

    def __post_init__(self) -> None:
        pool_id = _check_id(self.pool_id, "PoolSnapshot.pool_id")
        _set(self, "pool_id", pool_id)
        where = f"PoolSnapshot(pool_id={pool_id!r})"
        _set(self, "engine", _check_id(self.engine, f"{where}.engine"))
        _check_bool(self.ready, f"{where}.ready")
        for total_name, free_name in (
            ("slots_total", "slots_free"),
            ("vram_total_bytes", "vram_free_bytes"),
        ):
            total = _check_count(getattr(self, total_name), f"{where}.{total_name}")
            free = _check_count(getattr(self, free_name), f"{where}.{free_name}")
            if free > total:
                raise ValueError(f"{where}.{free_name} must be <= {total_name} ({total}), got {free!r}")
            _set(self, total_name, total)
            _set(self, free_name, free)
        _set(
            self,
            "max_context_tokens",
            _check_count(self.max_context_tokens, f"{where}.max_context_tokens"),
        )
        _set(
            self,
            "supported_extensions",
            _check_extensions(self.supported_extensions, f"{where}.supported_extensions"),
        )
        if (self.tokens_per_second is None) != (self.first_token_latency_ms is None):
            raise ValueError(
                f"{where}.tokens_per_second and first_token_latency_ms must be given together, got "
                f"tokens_per_second={self.tokens_per_second!r}, first_token_latency_ms={self.first_token_latency_ms!r}"
            )
        if self.tokens_per_second is not None:
            _set(
                self,
                "tokens_per_second",
                _check_real(self.tokens_per_second, f"{where}.tokens_per_second", positive=True),
            )
            _set(
                self,
                "first_token_latency_ms",
                _check_real(
                    self.first_token_latency_ms,
                    f"{where}.first_token_latency_ms",
                    positive=False,
                ),
            )
        _set(
            self,
            "queue_wait_ms",
            _check_real(self.queue_wait_ms, f"{where}.queue_wait_ms", positive=False),
        )

    @property
    def slots_busy(self) -> int:
        """Slots in use: ``slots_total - slots_free``."""
        return self.slots_total - self.slots_free

    @property
    def has_performance_hints(self) -> bool:
        """Whether ``tokens_per_second`` and ``first_token_latency_ms`` are known."""
        return self.tokens_per_second is not None

    def predicted_end_ms(self, expected_output_tokens: int) -> float | None:
        """Predicted time to finish a job from now, in ms, or ``None`` without performance hints.

        ``queue_wait_ms + first_token_latency_ms + expected_output_tokens * 1000 / tokens_per_second``.
        """
        tokens_per_second = self.tokens_per_second
        first_token_latency_ms = self.first_token_latency_ms
        if tokens_per_second is None or first_token_latency_ms is None:
            return None
        return self.queue_wait_ms + first_token_latency_ms + expected_output_tokens * 1000.0 / tokens_per_second


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What placement needs to know about one admitted job (all keyword-only).

    ``model`` must equal a pool's ``engine`` for that pool to be a candidate. ``required_extensions`` accepts a
    frozenset, set, list or tuple of str (e.g. LoRA adapters, tool or grammar support) and is stored as a frozenset.
    ``session_id`` (optional) is looked up in the affinity map. ``priority`` accepts a ``Priority`` or its string
    value and is carried for logging; it does not influence placement.
    """

    model: str
    required_context_tokens: int
    estimated_kv_bytes: int
    expected_output_tokens: int
    required_extensions: frozenset[str] = frozenset()
    session_id: str | None = None
    priority: Priority = Priority.INTERACTIVE

    def __post_init__(self) -> None:
        _set(self, "model", _check_id(self.model, "JobSpec.model"))
        for name in (
            "required_context_tokens",
            "estimated_kv_bytes",
            "expected_output_tokens",
        ):
            _set(self, name, _check_count(getattr(self, name), f"JobSpec.{name}"))
        _set(
            self,
            "required_extensions",
            _check_extensions(self.required_extensions, "JobSpec.required_extensions"),
        )
        if self.session_id is not None:
            _set(self, "session_id", _check_id(self.session_id, "JobSpec.session_id"))
        _set(self, "priority", Priority.parse(self.priority, "JobSpec.priority"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Assigned:
    """A placement decision: run the job on ``pool_id``.

    ``kv_warm`` is true when the session's pool from the affinity map was chosen. ``previous_pool_id`` is the pool
    the affinity map named for the session (``None`` without a binding): equal to ``pool_id`` when warm, and the pool
    that was lost on a failover. ``rule`` says which rule decided; ``predicted_end_ms`` is the chosen pool's
    predicted end time when it has performance hints. ``candidates_total`` counts the pools serving the job's model,
    ``candidates_feasible`` those that could take it.
    """

    pool_id: str
    kv_warm: bool
    previous_pool_id: str | None
    rule: PlacementRule
    predicted_end_ms: float | None
    candidates_total: int
    candidates_feasible: int

    def __post_init__(self) -> None:
        _check_id(self.pool_id, "Assigned.pool_id")
        _check_bool(self.kv_warm, "Assigned.kv_warm")
        if self.previous_pool_id is not None:
            _check_id(self.previous_pool_id, "Assigned.previous_pool_id")
        if not isinstance(self.rule, PlacementRule):
            raise TypeError(f"Assigned.rule must be a PlacementRule, got {self.rule!r}")
        predicted_end_ms = self.predicted_end_ms
        if predicted_end_ms is not None:
            if not isinstance(predicted_end_ms, (int, float)) or isinstance(predicted_end_ms, bool):
                raise TypeError(f"Assigned.predicted_end_ms must be a float or None, got {predicted_end_ms!r}")
            # inf is allowed: a tiny tokens_per_second can overflow the prediction, and it still orders correctly.
            if math.isnan(predicted_end_ms) or predicted_end_ms < 0:
                raise ValueError(f"Assigned.predicted_end_ms must be >= 0, got {predicted_end_ms!r}")
        total = _check_count(self.candidates_total, "Assigned.candidates_total")
        feasible = _check_count(self.candidates_feasible, "Assigned.candidates_feasible", minimum=1)
        if feasible > total:
            raise ValueError(f"Assigned.candidates_feasible must be <= candidates_total ({total}), got {feasible!r}")

    @property
    def failed_over(self) -> bool:
        """Whether the session had a pool in the affinity map that could not be used."""
        return self.previous_pool_id is not None and not self.kv_warm


@dataclass(frozen=True, slots=True, kw_only=True)
class NoCapacity:
    """A refusal: no pool can take the job now (a result, not an exception).

    ``reason`` follows the precedence in the module docstring. ``candidates_total`` counts the pools serving the
    job's model; ``candidates_feasible`` is always 0 here and is kept so both results log the same fields.
    """

    reason: NoCapacityReason
    candidates_total: int
    candidates_feasible: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.reason, NoCapacityReason):
            raise TypeError(f"NoCapacity.reason must be a NoCapacityReason, got {self.reason!r}")
        _check_count(self.candidates_total, "NoCapacity.candidates_total")
        feasible = _check_count(self.candidates_feasible, "NoCapacity.candidates_feasible")
        if feasible != 0:
            raise ValueError(f"NoCapacity.candidates_feasible must be 0, got {feasible!r}")


# -- the decision ------------------------------------------------------------------------------------------------


def _session_pool_id(job: JobSpec, affinity: SessionAffinity | Mapping[str, str] | None) -> str | None:
    """The pool the affinity map names for the job's session, or ``None``."""
    if affinity is None:
        return None
    if not isinstance(affinity, (SessionAffinity, Mapping)):
        raise TypeError(
            f"affinity must be a SessionAffinity, a Mapping[str, str] or None, got {affinity!r} "
            f"({type(affinity).__name__})"
        )
    session_id = job.session_id
    if session_id is None:
        return None
    pool_id = affinity.get(session_id)
    if pool_id is None:
        return None
    return _check_id(pool_id, f"affinity[{session_id!r}]")


def _resource_key(pool: PoolSnapshot) -> tuple[int, int, str]:
    # Same estimated_kv_bytes for every pool, so "most free VRAM after the job" orders like "most free VRAM".
    return (-pool.vram_free_bytes, pool.slots_total - pool.slots_free, pool.pool_id)


def _predicted_end_key(pool: PoolSnapshot, expected_output_tokens: int) -> tuple[float, int, int, str]:
    predicted_end_ms = pool.predicted_end_ms(expected_output_tokens)
    assert predicted_end_ms is not None  # only called when every feasible pool has hints
    return (
        predicted_end_ms,
        -pool.vram_free_bytes,
        pool.slots_total - pool.slots_free,
        pool.pool_id,
    )


def place(
    job: JobSpec,
    pools: Iterable[PoolSnapshot],
    affinity: SessionAffinity | Mapping[str, str] | None = None,
) -> Assigned | NoCapacity:
    """Choose the pool for ``job`` among ``pools``; see the module docstring for the rules and their order.

    ``pools`` is iterated once; pool ids must be unique within a call. ``affinity`` maps session id -> pool id and
    is only read (call ``SessionAffinity.bind``/``record_turn`` afterwards to record the decision).
    """
    if not isinstance(job, JobSpec):
        raise TypeError(f"job must be a JobSpec, got {job!r} ({type(job).__name__})")
    if isinstance(pools, (str, bytes)) or not isinstance(pools, Iterable):
        raise TypeError(f"pools must be an iterable of PoolSnapshot, got {pools!r} ({type(pools).__name__})")
    previous_pool_id = _session_pool_id(job, affinity)

    model = job.model
    required_context_tokens = job.required_context_tokens
    required_extensions = job.required_extensions
    estimated_kv_bytes = job.estimated_kv_bytes
    seen_pool_ids: set[str] = set()
    feasible: list[PoolSnapshot] = []
    all_feasible_hinted = True
    warm_pool: PoolSnapshot | None = None
    candidates_total = 0
    furthest_stage = -1
    pools_seen = 0
    for pool in pools:
        if type(pool) is not PoolSnapshot and not isinstance(pool, PoolSnapshot):
            raise TypeError(f"pools[{pools_seen}] must be a PoolSnapshot, got {pool!r} ({type(pool).__name__})")
        pool_id = pool.pool_id
        seen_pool_ids.add(pool_id)
        pools_seen += 1
        if len(seen_pool_ids) != pools_seen:
            raise ValueError(f"pools[{pools_seen - 1}].pool_id {pool_id!r} appears more than once in pools")
        if pool.engine != model:
            continue
        candidates_total += 1
        if pool.max_context_tokens < required_context_tokens:
            stage = 0
        elif required_extensions and not required_extensions <= pool.supported_extensions:
            stage = 1
        elif not pool.ready:
            stage = 2
        elif pool.slots_free < 1:
            stage = 3
        elif pool.vram_free_bytes < estimated_kv_bytes:
            stage = 4
        else:
            feasible.append(pool)
            if pool.tokens_per_second is None:
                all_feasible_hinted = False
            if pool_id == previous_pool_id:
                warm_pool = pool
            continue
        if stage > furthest_stage:
            furthest_stage = stage

    if not feasible:
        reason = _STAGE_REASONS[furthest_stage] if furthest_stage >= 0 else NoCapacityReason.NO_CAPACITY
        return NoCapacity(reason=reason, candidates_total=candidates_total)

    expected_output_tokens = job.expected_output_tokens
    if warm_pool is not None:
        chosen = warm_pool
        rule = PlacementRule.SESSION_AFFINITY
    elif all_feasible_hinted:
        chosen = min(feasible, key=lambda pool: _predicted_end_key(pool, expected_output_tokens))
        rule = PlacementRule.PREDICTED_END_TIME
    else:
        chosen = min(feasible, key=_resource_key)
        rule = PlacementRule.MOST_FREE_VRAM
    return Assigned(
        pool_id=chosen.pool_id,
        kv_warm=warm_pool is not None,
        previous_pool_id=previous_pool_id,
        rule=rule,
        predicted_end_ms=chosen.predicted_end_ms(expected_output_tokens),
        candidates_total=candidates_total,
        candidates_feasible=len(feasible),
    )
