"""The command line: ``python -m orchestrator_core [simulate|bench|demo] ...``.

Installed as the console script ``orchestrator-core``. The bare command (or options without a
subcommand) runs ``simulate`` with its defaults: an hour of overloaded traffic through the real
``Queue`` on a virtual clock, in a few seconds. ``bench`` runs the benchmarks
(``orchestrator_core._bench``); ``demo`` walks through the three admission policies.

Exit status: 0 on success, 2 for a bad option or a missing optional dependency (one line on
stderr, never a traceback), 1 when a simulation's accounting does not balance (a bug),
130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["build_parser", "main"]

PROG = "orchestrator-core"
_COMMANDS = ("simulate", "bench", "demo")

# SimConfig field -> (option, metavar, help); the defaults come from SimConfig itself.
_SIM_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("capacity", "--capacity", "N", "queue capacity"),
    ("policy", "--policy", "POLICY", "admission policy: reject-new, drop-lru or fail-fast"),
    ("rate", "--rate", "REQ_PER_S", "mean arrival rate in requests/s (overrides --load)"),
    ("load", "--load", "X", "arrival rate as a multiple of the pool's service capacity"),
    ("pattern", "--pattern", "PATTERN", "arrivals: poisson, or bursty (same mean rate, in bursts)"),
    ("burst_factor", "--burst-factor", "X", "bursty: rate in a burst / rate between bursts"),
    ("burst_every_s", "--burst-every", "S", "bursty: one burst every S seconds"),
    ("burst_length_s", "--burst-length", "S", "bursty: each burst lasts S seconds"),
    ("interactive_share", "--interactive-share", "F", "share of INTERACTIVE requests (the rest are BATCH)"),
    ("slots", "--slots", "N", "worker slots serving the queue"),
    ("prompt_tokens", "--prompt-tokens", "N", "mean prompt tokens per request"),
    ("output_tokens", "--output-tokens", "N", "mean output tokens per request"),
    ("token_sigma", "--token-sigma", "S", "log-normal spread of token counts (0: every request the same)"),
    ("tokens_per_s", "--tokens-per-second", "N", "decode speed of a slot, output tokens/s"),
    ("prefill_tokens_per_s", "--prefill-tokens-per-second", "N", "prefill speed of a slot, prompt tokens/s"),
    ("first_token_ms", "--first-token-ms", "MS", "fixed overhead per request before the first token, ms"),
    ("duration_s", "--duration", "S", "virtual seconds of traffic"),
    ("seed", "--seed", "N", "random seed: the same seed gives the same report"),
    ("max_retries", "--max-retries", "N", "retries a refused client makes (0: none)"),
    ("honour_retry_after", "--honour-retry-after", "F", "share of clients that wait the Retry-After they were given"),
    ("retry_delay_ms", "--retry-delay-ms", "MS", "retry delay of the clients that ignore Retry-After, ms"),
    ("patience_s", "--patience", "S", "a client cancels its job after S seconds queued (0: never)"),
    ("samples", "--samples", "N", "intervals of the depth / wait timeline"),
)
_INT_FIELDS = frozenset({"capacity", "slots", "seed", "max_retries", "samples"})
_OPTION_OF = {field: option for field, option, _, _ in _SIM_OPTIONS}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are usage + one line, exit status 2."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> _Parser:
    """The ``orchestrator-core`` argument parser (``simulate``, ``bench``, ``demo``)."""
    from . import __version__
    from .simulate import PATTERNS, POLICIES, SimConfig

    parser = _Parser(
        prog=PROG,
        description="Admission queue for LLM inference: simulate a pool behind it, benchmark it, or see a demo. "
        "Without a subcommand, runs 'simulate'.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{simulate,bench,demo}", parser_class=_Parser)
    sim = sub.add_parser(
        "simulate",
        help="run traffic through the real Queue on a virtual clock and report (the default)",
        usage="%(prog)s [options]  (see --help)",
        description="Run a workload through the real Queue on a virtual clock (an hour of traffic in seconds; "
        "the same seed gives the same report) and print a report.",
    )
    defaults = {f.name: f.default for f in dataclasses.fields(SimConfig)}
    for field, option, metavar, text in _SIM_OPTIONS:
        kwargs: dict[str, Any] = {"dest": field, "metavar": metavar, "default": None}
        if field == "policy":
            kwargs["choices"] = POLICIES
            kwargs.pop("metavar")
        elif field == "pattern":
            kwargs["choices"] = PATTERNS
            kwargs.pop("metavar")
        else:
            kwargs["type"] = _int if field in _INT_FIELDS else _float
        default = defaults[field]
        shown = "--load x capacity" if field == "rate" else f"{default:g}" if isinstance(default, float) else default
        names = [option, "--honor-retry-after"] if field == "honour_retry_after" else [option]
        sim.add_argument(*names, help=f"{text} (default: {shown})", **kwargs)
    sim.add_argument("--compare", action="store_true", help="run the same traffic under all three policies")
    sim.add_argument("--json", metavar="PATH", help="write the full report as JSON to PATH ('-': stdout, no text)")
    sim.add_argument("--plot", metavar="PATH", help="write a PNG of depth, wait and acceptance (needs matplotlib)")
    sim.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress on stderr: auto = only on a terminal and for runs over a second (default: auto)",
    )
    sub.add_parser("bench", help="run the benchmarks (options: orchestrator-core bench --help)", add_help=False)
    sub.add_parser("demo", help="show the three admission policies on a tiny queue")
    parser.commands = {"simulate": sim}
    return parser


class _Progress:
    """Progress on stderr for long runs, erased when done; never on a pipe unless forced."""

    def __init__(self, stream: TextIO, mode: str, runs: int) -> None:
        self.stream = stream
        self.enabled = mode == "on" or (mode == "auto" and stream.isatty())
        self.delay_s = 1.0 if mode == "auto" else 0.0
        self.runs = runs
        self.index = 0
        self.policy: str | None = None
        self.start = time.monotonic()
        self.last = 0.0
        self.width = 0

    def __call__(self, policy: str, fraction: float) -> None:
        if policy != self.policy:
            self.policy = policy
            self.index += 1
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.delay_s or (now - self.last < 0.1 and fraction < 1.0):
            return
        self.last = now
        run = f" ({self.index}/{self.runs})" if self.runs > 1 else ""
        line = f"{PROG}: simulating {policy}{run} {100.0 * fraction:5.1f}%"
        self.width = max(self.width, len(line))
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()

    def done(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _fail(command: str, message: str) -> int:
    sys.stderr.write(f"{PROG} {command}: error: {message}\n")
    return 2


def _check_output_path(path: str) -> str | None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{path!r} is a directory"
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    return None


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(stream.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def _simulate(parser: _Parser, args: argparse.Namespace) -> int:
    from . import ENGINE
    from .simulate import SimConfig, format_report, report_to_json, simulate, write_plot

    given = {field: getattr(args, field) for field, *_ in _SIM_OPTIONS if getattr(args, field) is not None}
    try:
        config = SimConfig(**given)
    except (TypeError, ValueError) as exc:
        field, _, rest = str(exc).partition(" ")
        message = f"argument {_OPTION_OF[field]}: {rest}" if field in _OPTION_OF else str(exc)
        for name, option in _OPTION_OF.items():
            if "_" in name:
                message = re.sub(rf"\b{name}\b", option, message)
        sim_parser = parser.commands["simulate"]
        sim_parser.print_usage(sys.stderr)
        sys.stderr.write(f"{sim_parser.prog}: error: {message}\n")
        return 2
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not (option == "--json" and path == "-"):
            problem = _check_output_path(path)
            if problem is not None:
                return _fail("simulate", f"cannot write {option} {path!r}: {problem}")
    if args.plot is not None:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            return _fail("simulate", "--plot needs matplotlib: pip install 'orchestrator-core[plot]'")
    progress = _Progress(sys.stderr, args.progress, 3 if args.compare else 1)
    started = time.perf_counter()
    try:
        report = simulate(config, compare=args.compare, progress=progress)
    except KeyboardInterrupt:
        progress.done()
        sys.stderr.write(f"{PROG} simulate: interrupted\n")
        return 130
    finally:
        progress.done()
    wall_s = time.perf_counter() - started
    if args.json is not None:
        text = report_to_json(report)
        if args.json == "-":
            sys.stdout.write(text)
        else:
            try:
                with open(args.json, "w", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError as exc:
                return _fail("simulate", f"cannot write --json {args.json!r}: {exc.strerror or exc}")
    if args.plot is not None:
        try:
            write_plot(report, args.plot)
        except OSError as exc:
            return _fail("simulate", f"cannot write --plot {args.plot!r}: {exc.strerror or exc}")
    if args.json != "-":
        label = f"{ENGINE} ({'compiled' if ENGINE == 'c' else 'pure Python'})"
        ascii_only = not _can_encode(sys.stdout, "▁█")
        out = format_report(report, engine_label=label, wall_s=wall_s, ascii_only=ascii_only)
        if not args.compare:
            out += "\n(--compare runs the same traffic under all three policies side by side)\n"
        sys.stdout.write(out)
    if not all(run["accounting_ok"] for run in report["runs"]):
        sys.stderr.write(f"{PROG} simulate: error: the accounting did not balance (a bug: please report it)\n")
        return 1
    return 0


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("orchestrator_core._bench")
    except ImportError as exc:
        detail = "" if getattr(exc, "name", None) == "orchestrator_core._bench" else f" ({exc})"
        return _fail("bench", f"the benchmark module orchestrator_core._bench is not available{detail}")
    try:
        result = bench.main(argv)
    except SystemExit as exc:  # its argparse on --help or a bad option
        result = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    return int(result or 0)


def _demo() -> int:
    import orchestrator_core as oc

    now = [0.0]
    print(f"{PROG} {oc.__version__} | engine: {oc.ENGINE}")
    print("A queue of capacity 3; five tasks arrive at once: batch, batch, interactive, interactive, batch.")
    arrivals = ("batch", "batch", "interactive", "interactive", "batch")
    for policy in oc.AdmissionPolicy:
        print(f"\n{policy.value}:")
        q = oc.Queue(3, policy, pool_id="demo", clock=lambda: now[0], id_prefix=policy.value.replace("-", "_"))
        for i, prio in enumerate(arrivals, 1):
            res = q.enqueue(oc.Task("llama-3.1-8b", 256, f"session-{i}", priority=prio))
            if isinstance(res, oc.Accepted):
                line = f"  {prio:<11} -> Accepted  {res.job_id} at position {res.position}"
                if res.evicted is not None:
                    line += f", evicting {res.evicted.job_id} ({res.evicted.priority.value})"
            else:
                status, headers, _body = res.to_http()
                line = (
                    f"  {prio:<11} -> Rejected  {res.reason.value}, HTTP {status}, "
                    f"Retry-After {headers.get('Retry-After', '-')} s: {res.message}"
                )
            print(line)
        order = [job.job_id for job in q.dequeue_many(10)]
        m = q.metrics()
        print(f"  dequeue order: {', '.join(order) or '(empty)'}")
        print(f"  counters: accepted {m.accepted}, rejected {m.rejected_total}, evicted {m.evicted}")
    print(f"\nNext: '{PROG} simulate' runs an hour of traffic through the queue on a virtual clock.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "simulate")
    if args_list[0] == "bench":
        return _bench(args_list[1:])
    parser = build_parser()
    if not args_list[0].startswith("-") and args_list[0] not in _COMMANDS:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{PROG}: error: unknown command {args_list[0]!r} (choose from {', '.join(_COMMANDS)})\n")
        return 2
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command == "demo":
        return _demo()
    return _simulate(parser, args)


if __name__ == "__main__":
    sys.exit(main())
