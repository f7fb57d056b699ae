"""The simulator: determinism, accounting, policies, retries and the report's schema.

Every simulation test runs the real ``Queue`` of the engine under test (``impl``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
from types import ModuleType
from typing import Any

import pytest

from orchestrator_core import _core_py
from orchestrator_core.simulate import (
    POLICIES,
    PRIORITIES,
    REPORT_SCHEMA,
    SCHEMA_VERSION,
    RequestState,
    SimConfig,
    Simulation,
    format_report,
    nearest_rank,
    report_to_json,
    simulate,
    sparkline,
)

# A small pool so each run takes a fraction of a second on the pure engine.
SMALL: dict[str, Any] = {"duration_s": 300.0, "slots": 8, "capacity": 16, "samples": 30}


def small(**kw: Any) -> SimConfig:
    return SimConfig(**{**SMALL, **kw})


def run(impl: ModuleType, **kw: Any) -> tuple[dict[str, Any], Simulation]:
    sim = Simulation(small(**kw), queue_cls=impl.Queue, task_cls=impl.Task)
    return sim.run(), sim


def full(impl: ModuleType, config: SimConfig, compare: bool = False) -> dict[str, Any]:
    return simulate(config, compare=compare, queue_cls=impl.Queue, task_cls=impl.Task)


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [report["priorities"][p] for p in PRIORITIES] + [report["totals"]]


def assert_balanced(report: dict[str, Any], sim: Simulation) -> None:
    """The accounting identities, checked from the numbers (not the report's own flag)."""
    for row in rows(report):
        assert row["offered"] == row["accepted"] + row["rejected_total"]
        assert row["accepted"] == row["completed"] + row["evicted"] + row["cancelled"] + row["drained"]
        assert row["accepted"] == row["accepted_first_try"] + row["accepted_on_retry"]
        assert row["rejected_total"] == sum(row["rejected"].values())
        assert row["wait_ms"]["count"] == row["completed"]
    totals = report["totals"]
    m = sim.queue.metrics()
    assert m.accepted == totals["accepted"]
    assert m.evicted == totals["evicted"]
    assert m.cancelled == totals["cancelled"]
    assert m.dequeued == totals["completed"]
    assert m.drained == totals["drained"]
    assert m.depth == 0 and m.closed
    assert m.accepted + m.rejected_total == report["attempts"]["total"]
    assert report["attempts"]["total"] == totals["offered"] + report["attempts"]["retries"]
    # Every request ends in exactly one final state, and the report counts them.
    final = dict.fromkeys(RequestState, 0)
    for r in sim.requests:
        final[r.state] += 1
    assert final[RequestState.NEW] == final[RequestState.QUEUED] == final[RequestState.SERVING] == 0
    assert final[RequestState.COMPLETED] == totals["completed"]
    assert final[RequestState.EVICTED] == totals["evicted"]
    assert final[RequestState.CANCELLED] == totals["cancelled"]
    assert final[RequestState.DRAINED] == totals["drained"]
    assert final[RequestState.REJECTED] + final[RequestState.RETRY_WAIT] == totals["rejected_total"]
    assert final[RequestState.RETRY_WAIT] == totals["retry_pending_at_end"]
    assert len(sim.requests) == totals["offered"]
    assert report["accounting_ok"] is True


# -- determinism -----------------------------------------------------------------------


def test_same_seed_gives_byte_identical_json(impl: ModuleType) -> None:
    config = small(load=2.0, patience_s=5.0)
    first = report_to_json(full(impl, config, compare=True))
    second = report_to_json(full(impl, config, compare=True))
    assert first == second
    other = report_to_json(full(impl, dataclasses.replace(config, seed=2), compare=True))
    assert other != first


@pytest.mark.c_extension
def test_both_engines_give_the_same_report() -> None:
    core_c = importlib.import_module("orchestrator_core._core_c")
    config = small(load=2.5, patience_s=3.0, pattern="bursty")
    from_c = full(core_c, config, compare=True)
    from_py = full(_core_py, config, compare=True)
    assert (from_c["engine"], from_py["engine"]) == ("c", "py")
    from_c["engine"] = from_py["engine"] = "-"
    assert report_to_json(from_c) == report_to_json(from_py)


def test_simulation_runs_once(impl: ModuleType) -> None:
    sim = Simulation(small(duration_s=10.0), queue_cls=impl.Queue, task_cls=impl.Task)
    sim.run()
    with pytest.raises(RuntimeError, match="runs once"):
        sim.run()


# -- load and policies -----------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_load_below_capacity_has_no_rejections(impl: ModuleType, policy: str) -> None:
    report, sim = run(impl, policy=policy, load=0.5, slots=32)
    totals = report["totals"]
    assert totals["offered"] > 1000
    assert totals["rejected_total"] == 0
    assert totals["evicted"] == 0
    assert totals["accepted"] == totals["offered"]
    assert report["attempts"]["retries"] == 0
    assert 0.4 < report["slots"]["utilisation"] < 0.6
    assert_balanced(report, sim)


def test_overload_under_reject_new_rejects_and_never_evicts(impl: ModuleType) -> None:
    report, sim = run(impl, policy="reject-new", load=3.0)
    totals = report["totals"]
    assert totals["rejected"]["QUEUE_FULL"] > totals["offered"] // 3
    assert totals["rejected_total"] == totals["rejected"]["QUEUE_FULL"]
    assert totals["evicted"] == 0
    assert report["depth"]["max"] == 16
    assert report["slots"]["utilisation"] > 0.95
    assert report["queue_counters"]["rejected"]["QUEUE_FULL"] == sim.queue.metrics().rejected_total
    assert_balanced(report, sim)


def test_overload_under_drop_lru_evicts_and_reports_every_eviction(impl: ModuleType) -> None:
    report, sim = run(impl, policy="drop-lru", load=3.0)
    pri = report["priorities"]
    evicted = report["totals"]["evicted"]
    assert evicted > report["totals"]["offered"] // 3
    # Every eviction the queue counted came back in Accepted.evicted and was reported.
    assert sim.queue.metrics().evicted == evicted == pri["interactive"]["evicted"] + pri["batch"]["evicted"]
    assert sum(report["timeline"]["evicted"]) == evicted
    victims = [r for r in sim.requests if r.state is RequestState.EVICTED]
    assert len(victims) == evicted
    assert len({r.job_id for r in victims}) == evicted
    assert all(r.admitted_on >= 1 for r in victims)
    # An interactive task can always evict; only batch tasks meet a queue full of interactive work.
    assert pri["interactive"]["rejected_total"] == 0
    # Batch jobs are the first victims.
    share = {p: pri[p]["evicted"] / pri[p]["accepted"] for p in PRIORITIES}
    assert share["batch"] > share["interactive"] > 0
    assert_balanced(report, sim)


def test_fail_fast_keeps_the_queue_short(impl: ModuleType) -> None:
    report, sim = run(impl, policy="fail-fast", load=3.0)
    # Admitted only when nothing of its class (or, for batch, anything) is ahead: at most
    # one interactive and one batch job wait.
    assert report["depth"]["max"] <= 2
    assert report["totals"]["rejected_total"] > 0
    assert_balanced(report, sim)


def test_compare_runs_every_policy_on_identical_traffic(impl: ModuleType) -> None:
    config = small(load=2.0)
    report = full(impl, config, compare=True)
    assert report["compare"] is True
    assert [r["policy"] for r in report["runs"]] == list(POLICIES)
    for prio in PRIORITIES:
        offered = {r["priorities"][prio]["offered"] for r in report["runs"]}
        assert len(offered) == 1 and offered.pop() > 0
    arrivals = {tuple(r["timeline"]["arrivals"]) for r in report["runs"]}
    assert len(arrivals) == 1
    # The policies differ in what they do with that traffic.
    assert len({r["totals"]["rejected_total"] for r in report["runs"]}) == 3
    # Each run of the comparison is the run of that policy on its own.
    for run_report in report["runs"]:
        alone = full(impl, config.with_policy(run_report["policy"]))["runs"][0]
        assert alone == run_report


# -- clients ---------------------------------------------------------------------------


def test_clients_honouring_retry_after_are_admitted_more_often_on_their_retry(impl: ModuleType) -> None:
    report, sim = run(impl, policy="reject-new", load=2.0, honour_retry_after=0.5, retry_delay_ms=1.0)
    honoured = report["retries"]["honoured"]
    ignored = report["retries"]["ignored"]
    for group in (honoured, ignored):
        assert group["retried"] > 50
        assert group["refused"] == (
            group["admitted_on_first_retry"]
            + group["admitted_on_later_retry"]
            + group["gave_up"]
            + group["retry_pending_at_end"]
        )
    assert honoured["clients"] + ignored["clients"] == report["totals"]["offered"]
    assert honoured["first_retry_admitted_share"] > 2 * ignored["first_retry_admitted_share"]
    assert honoured["mean_retry_delay_ms"] > 10 * ignored["mean_retry_delay_ms"]
    assert ignored["mean_retry_delay_ms"] == 1.0
    assert_balanced(report, sim)


def test_no_retries_means_one_attempt_per_request(impl: ModuleType) -> None:
    report, sim = run(impl, policy="reject-new", load=2.0, max_retries=0)
    assert report["attempts"] == {"total": report["totals"]["offered"], "retries": 0}
    assert report["totals"]["accepted_on_retry"] == 0
    for group in report["retries"].values():
        assert group["retried"] == 0 and group["gave_up"] == group["refused"] > 0
        assert group["first_retry_admitted_share"] is None
    assert_balanced(report, sim)


def test_impatient_clients_cancel_queued_jobs(impl: ModuleType) -> None:
    report, sim = run(impl, policy="reject-new", load=2.0, patience_s=0.5)
    cancelled = report["totals"]["cancelled"]
    assert cancelled > 0
    assert sim.queue.metrics().cancelled == cancelled
    # Nobody who was served waited longer than their patience.
    assert report["totals"]["wait_ms"]["max"] <= 500.0
    assert_balanced(report, sim)


@pytest.mark.parametrize("policy", POLICIES)
def test_accounting_balances_with_everything_on(impl: ModuleType, policy: str) -> None:
    report, sim = run(impl, policy=policy, load=1.6, patience_s=2.0, pattern="bursty", duration_s=200.0)
    assert_balanced(report, sim)


# -- traffic ---------------------------------------------------------------------------


def test_bursty_traffic_arrives_in_bursts_with_the_same_mean(impl: ModuleType) -> None:
    config = {"pattern": "bursty", "burst_every_s": 60.0, "burst_length_s": 10.0, "burst_factor": 5.0}
    report, _ = run(impl, rate=10.0, duration_s=600.0, samples=60, **config)
    arrivals = report["timeline"]["arrivals"]  # 10 s intervals: every sixth is a burst
    burst = [n for i, n in enumerate(arrivals) if i % 6 == 0]
    quiet = [n for i, n in enumerate(arrivals) if i % 6 != 0]
    assert sum(burst) / len(burst) > 3 * sum(quiet) / len(quiet)
    assert abs(sum(arrivals) - 6000) < 6000 * 0.1


def test_poisson_arrivals_match_the_rate_and_the_interactive_share(impl: ModuleType) -> None:
    report, _ = run(impl, rate=20.0, duration_s=500.0, interactive_share=0.25)
    offered = report["totals"]["offered"]
    assert abs(offered - 10_000) < 500
    assert abs(report["priorities"]["interactive"]["offered"] / offered - 0.25) < 0.03


def test_load_sets_the_rate_from_the_service_capacity() -> None:
    config = SimConfig(slots=10, first_token_ms=0.0, prompt_tokens=1000, prefill_tokens_per_s=1000.0,
                       output_tokens=100, tokens_per_s=100.0, load=2.0)  # fmt: skip
    assert config.mean_service_s == 2.0
    assert config.service_capacity_per_s == 5.0
    assert config.rate_per_s == 10.0
    assert dataclasses.replace(config, rate=7.5).rate_per_s == 7.5
    assert dataclasses.replace(config, rate=7.5).load_factor == 1.5


def test_zero_token_sigma_gives_identical_service_times(impl: ModuleType) -> None:
    _, sim = run(impl, token_sigma=0.0, duration_s=30.0)
    assert {r.service_s for r in sim.requests} == {0.05 + 512 / 8000 + 200 / 60}


def test_only_interactive_traffic(impl: ModuleType) -> None:
    report, sim = run(impl, interactive_share=1.0, load=2.0)
    batch = report["priorities"]["batch"]
    assert batch["offered"] == 0
    assert batch["wait_ms"] == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    assert_balanced(report, sim)


# -- the report ------------------------------------------------------------------------


def test_waits_are_the_queues_own_job_waits(impl: ModuleType) -> None:
    report, sim = run(impl, policy="reject-new", load=1.5)
    m = sim.queue.metrics()
    waits = report["totals"]["wait_ms"]
    assert waits["count"] == m.wait_count > 0
    assert math.isclose(waits["mean"], m.wait_sum_ms / m.wait_count, rel_tol=1e-6, abs_tol=1e-3)
    for row in rows(report):
        w = row["wait_ms"]
        assert 0 <= w["p50"] <= w["p90"] <= w["p99"] <= w["max"]
    # INTERACTIVE always leaves first, so it waits less.
    pri = report["priorities"]
    assert pri["interactive"]["wait_ms"]["p90"] < pri["batch"]["wait_ms"]["p90"]


def test_timeline_covers_the_run(impl: ModuleType) -> None:
    report, _ = run(impl, policy="drop-lru", load=2.0, samples=25)
    tl = report["timeline"]
    assert tl["interval_s"] == 12.0
    for key, values in tl.items():
        if key != "interval_s":
            assert len(values) == 25, key
    assert tl["t_s"][0] == 12.0 and tl["t_s"][-1] == 300.0
    totals = report["totals"]
    assert sum(tl["arrivals"]) == totals["offered"]
    assert sum(tl["dequeued"]) == totals["completed"]
    assert sum(tl["accepted"]) == totals["accepted"]
    assert sum(tl["accepted"]) + sum(tl["rejected"]) == report["attempts"]["total"]
    assert max(tl["depth_max"]) == report["depth"]["max"] <= report["depth"]["capacity"]
    assert all(0 <= b <= 8 for b in tl["busy_mean"])
    assert all(d <= m for d, m in zip(tl["depth_mean"], tl["depth_max"], strict=True))
    mean = sum(tl["depth_mean"]) / len(tl["depth_mean"])
    assert math.isclose(mean, report["depth"]["mean"], abs_tol=0.01)


def test_nearest_rank_percentiles_are_exact() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank(values, 90) == 90.0
    assert nearest_rank(values, 99) == 99.0
    assert nearest_rank(values, 100) == 100.0
    assert nearest_rank(values, 0.5) == 1.0
    assert nearest_rank([7.0], 99) == 7.0
    assert nearest_rank([], 50) is None
    with pytest.raises(ValueError, match="pct"):
        nearest_rank(values, 0)


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 4, 8], 8) == " ▁▂▄█"
    assert sparkline([0, 8, None, 4], 8, ascii_only=True) == " @ +"
    assert sparkline([1, 8, 0, 0], 8, width=2) == "█ "
    assert sparkline([], 8) == ""
    with pytest.raises(ValueError, match="width"):
        sparkline([1], 8, width=0)


def test_text_report_shows_every_section(impl: ModuleType) -> None:
    report = full(impl, small(policy="reject-new", load=2.0))
    text = format_report(report, engine_label="xyz", wall_s=0.5)
    first = text.splitlines()[0]
    assert first == f"orchestrator-core {report['version']} | engine: xyz"
    for needle in (
        "policy reject-new",
        "offered (requests)",
        "rejected QUEUE_FULL",
        "evicted (drop-lru)",
        "wait p50 ms",
        "wait p90 ms",
        "wait p99 ms",
        "utilised",
        "depth over time",
        "honour Retry-After",
        "admitted on their first retry",
        "accounting: offered = accepted + rejected; accepted = completed + evicted + cancelled + drained: ok",
    ):
        assert needle in text, needle
    compared = format_report(full(impl, small(load=2.0), compare=True), ascii_only=True)
    assert compared.splitlines()[0].endswith(f"engine: {impl.Queue.__module__.rsplit('_', 1)[-1]}")
    for policy in POLICIES:
        assert f"  {policy:<10} |" in compared
    assert "▁" not in compared and "█" not in compared


# -- the schema ------------------------------------------------------------------------


def _validate(doc: Any, schema: dict[str, Any], path: str = "$") -> None:
    """A small validator for the subset of JSON Schema REPORT_SCHEMA uses."""
    if "const" in schema:
        assert doc == schema["const"], path
    if "enum" in schema:
        assert doc in schema["enum"], path
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "null": lambda v: v is None,
        }
        assert any(checks[t](doc) for t in types), f"{path}: {doc!r} is not {types}"
    if isinstance(doc, (int, float)) and not isinstance(doc, bool) and "minimum" in schema:
        assert doc >= schema["minimum"], path
    if isinstance(doc, dict) and "properties" in schema:
        assert set(schema["required"]) <= set(doc), f"{path}: missing {set(schema['required']) - set(doc)}"
        if schema.get("additionalProperties") is False:
            assert set(doc) <= set(schema["properties"]), f"{path}: extra {set(doc) - set(schema['properties'])}"
        for key, value in doc.items():
            _validate(value, schema["properties"][key], f"{path}.{key}")
    if isinstance(doc, list) and "items" in schema:
        assert len(doc) >= schema.get("minItems", 0), path
        for i, item in enumerate(doc):
            _validate(item, schema["items"], f"{path}[{i}]")


def _described(schema: dict[str, Any], path: str = "$") -> list[str]:
    """Paths of schema nodes without a description."""
    missing = [] if schema.get("description") else [path]
    for key, sub in schema.get("properties", {}).items():
        missing += _described(sub, f"{path}.{key}")
    if "items" in schema:
        missing += _described(schema["items"], f"{path}[]")
    return missing


def test_json_report_validates_against_the_documented_schema(impl: ModuleType) -> None:
    report = json.loads(report_to_json(full(impl, small(load=2.0, patience_s=1.0), compare=True)))
    assert report["schema_version"] == SCHEMA_VERSION
    _validate(report, REPORT_SCHEMA)
    assert _described(REPORT_SCHEMA) == []
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(report)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("schema_version"),
        lambda r: r.update(schema_version=SCHEMA_VERSION + 1),
        lambda r: r["runs"][0]["totals"].pop("evicted"),
        lambda r: r["runs"][0]["priorities"]["batch"].update(surprise=1),
        lambda r: r["runs"][0]["timeline"]["depth"].append("deep"),
        lambda r: r["runs"][0].update(policy="drop-newest"),
        lambda r: r.update(runs=[]),
    ],
)
def test_the_schema_refuses_a_report_that_strays(mutate: Any) -> None:
    report = json.loads(report_to_json(simulate(small(duration_s=20.0), queue_cls=_core_py.Queue)))
    _validate(report, REPORT_SCHEMA)
    bad = copy.deepcopy(report)
    mutate(bad)
    with pytest.raises(AssertionError):
        _validate(bad, REPORT_SCHEMA)


# -- configuration errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rate": -1.0}, ValueError, r"rate must be positive, got -1\.0"),
        ({"rate": 0}, ValueError, "rate must be positive"),
        ({"load": float("nan")}, ValueError, "load must be a finite number"),
        ({"slots": 0}, ValueError, "slots must be at least 1, got 0"),
        ({"slots": 2.5}, TypeError, "slots must be an int"),
        ({"capacity": True}, TypeError, "capacity must be an int"),
        ({"policy": "drop-newest"}, ValueError, "policy must be one of reject-new, drop-lru, fail-fast"),
        ({"pattern": "spiky"}, ValueError, "pattern must be one of poisson, bursty"),
        ({"interactive_share": 1.5}, ValueError, "interactive_share must be between 0 and 1"),
        ({"honour_retry_after": -0.1}, ValueError, "honour_retry_after must not be negative"),
        ({"duration_s": 0.0}, ValueError, "duration_s must be positive"),
        ({"max_retries": -1}, ValueError, "max_retries must be at least 0"),
        ({"output_tokens": 0.5}, ValueError, "output_tokens must be at least 1"),
        ({"burst_length_s": 60.0}, ValueError, "burst_length_s must be shorter than burst_every_s"),
        ({"burst_factor": 0.5}, ValueError, "burst_factor must be at least 1"),
        ({"samples": 10**6}, ValueError, "samples must be at most"),
        ({"seed": "1"}, TypeError, "seed must be an int"),
        ({"rate": 1e6, "duration_s": 1e3}, ValueError, "duration_s must keep the expected requests"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        SimConfig(**kwargs)


def test_policy_members_are_accepted_and_normalised() -> None:
    from orchestrator_core import AdmissionPolicy

    assert SimConfig(policy=AdmissionPolicy.DROP_LRU).policy == "drop-lru"
    assert SimConfig().with_policy("fail-fast").policy == "fail-fast"
    with pytest.raises(TypeError, match="config must be a SimConfig"):
        simulate({"rate": 1.0})  # type: ignore[arg-type]
