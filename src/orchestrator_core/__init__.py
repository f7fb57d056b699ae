"""orchestrator_core: the admission queue of an LLM-inference orchestrator.

``Queue`` admits or refuses each ``Task`` at once (``Accepted`` / ``Rejected``), keeps
admitted work in a bounded FIFO per priority and pushes back when full. ``ENGINE`` is
``"c"`` when the compiled engine is in use and ``"py"`` for the pure-Python twin.
"""

from __future__ import annotations

from ._builder import QueueBuilder
from ._engine import ENGINE, engine
from ._stats import QueueMetrics
from ._types import AdmissionPolicy, Priority, RejectionReason
from .affinity import SessionAffinity
from .placement import Assigned, JobSpec, NoCapacity, NoCapacityReason, PlacementRule, PoolSnapshot, place

Queue = engine.Queue
Task = engine.Task
Job = engine.Job
Accepted = engine.Accepted
Rejected = engine.Rejected

__version__ = "0.1.0"

__all__ = [
    "ENGINE",
    "Accepted",
    "AdmissionPolicy",
    "Assigned",
    "Job",
    "JobSpec",
    "NoCapacity",
    "NoCapacityReason",
    "PlacementRule",
    "PoolSnapshot",
    "Priority",
    "Queue",
    "QueueBuilder",
    "QueueMetrics",
    "Rejected",
    "RejectionReason",
    "SessionAffinity",
    "Task",
    "__version__",
    "place",
]
