"""Defense overhead: per-query latency of every registered defense against the undefended victim.

Every defense chain (each registered defense with its default parameters, or the chains chosen with
``--defense NAME[:json-params]``) plus ``none``, the undefended baseline, serves the same victim
(``VictimSpec()``: Fashion-MNIST LeNet-5) two ways:

* ``in-process``: :class:`arena.service.VictimService` behind an :class:`arena.oracle.Oracle` in
  this process (torch with one thread);
* ``ray``: the same service in a Ray actor (:func:`orchestration.ray_service.start_victim_service`,
  one torch thread) reached through :class:`orchestration.ray_service.RayServiceProxy` and an
  ``Oracle``.

At batch sizes 1, 64 and 256 the figure is the median over rounds of the seconds per oracle call,
reported as microseconds per query (image) and as the ratio to ``none`` at the same batch size
and transport (``×none``; above 1 is slower). The service's own account of the time spent in the
defense chain (``AccountStats.defense_seconds``) is reported beside it.

Preparation: each chain is prepared once, in this process, before anything is timed
(:func:`arena.victims.defended_model`, with the victims' cache directory), so training-time
defenses (adaptive misinformation, ...) train once and are cached beside the victim; the Ray
actors then load them from that cache. Preparation seconds are reported separately, with whether
the artefacts came from the cache (no new ``defense-*.pt`` file appeared in the cache directory)
or were trained by this run.

Measurements are interleaved: every round measures every (batch size, variant) pair once, the
variant order rotating from round to round, so machine noise hits all variants alike.

Stateful defenses (detectors such as PRADA) keep per-attacker state that grows with the queries
an account has sent. To keep that state comparable, every measurement opens a *fresh account*
and sends the same fixed sequence of distinct test images (the first N of the test split: by
default N = 2000, 8192 and 8192 images at batch 1, 64 and 256), so in every round and on both
transports a detector's state grows from empty to N queries while it is timed. No image is sent
twice to one account. If a detector refuses the benchmark's account, the measurement stops there
and the table notes it. Warm-up calls, output checks and the one untimed "settling" call made
right before each measurement (so whichever variant comes first after a switch does not pay for
it) use accounts of their own.

Errors (a defense that cannot be built, prepared, started in an actor or that fails to answer)
are recorded in the JSON and the table instead of stopping the run.

Usage (from the repository root)::

    python benchmarks/defense_overhead.py [--defense NAME[:JSON]]... [--rounds 5]
        [--queries 2000 8192 8192] [--max-seconds 30] [--out FILE] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
import torch
from machine import machine_info
from rich.console import Console
from rich.table import Table
from torch import nn

import arena.defenses  # noqa: F401  (registers every defense)
from arena.data import DataSplits, load_dataset
from arena.defenses.chain import DefenseChain, build_chain
from arena.defenses.registry import DEFENSES
from arena.errors import QueryRefused
from arena.oracle import InputSpec, Oracle
from arena.registry import build_plugin, plugin_label
from arena.service import ServiceAPI, VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.victims import default_victim_cache, defended_model, load_or_train
from orchestration.ray_service import RayServiceProxy, start_victim_service

BATCH_SIZES: tuple[int, ...] = (1, 64, 256)
BASELINE = "none"
TRANSPORTS: tuple[str, ...] = ("in-process", "ray")
DEFAULT_QUERIES: tuple[int, ...] = (2000, 8192, 8192)
"""images per measurement (one fresh account) at batch 1, 64, 256"""
QUICK_QUERIES: tuple[int, ...] = (100, 1024, 2048)
WARMUP_QUERIES: tuple[int, ...] = (20, 256, 512)
"""images per variant and batch size sent before the first round (on a warm-up account)"""
BUDGET = 10**15
"""Every oracle call is charged; no run of this benchmark comes near this many queries."""
OBJECT_STORE_BYTES = 1024**3
RAY_NUM_CPUS = 2
CHECK_IMAGES = 64
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "defense_overhead.json"


@dataclass(frozen=True)
class DefenseRequest:
    """One ``--defense`` argument: a registered name and its parameters."""

    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Settings:
    requests: tuple[DefenseRequest, ...] | None
    """``None``: every registered defense with default parameters"""
    rounds: int
    queries: dict[int, int]
    max_seconds: float
    quick: bool
    out: Path
    markdown: bool


@dataclass
class Subject:
    """One defense chain on the victim: built, prepared once, then served two ways."""

    key: str
    specs: tuple[PluginSpec, ...]
    chain: DefenseChain | None = None
    model: nn.Module | None = None
    stateful: bool = False
    needs_preparation: bool = False
    needs_training: bool = False
    prepare_seconds: float | None = None
    artefacts_created: list[str] = field(default_factory=list)
    error: str | None = None
    ray_error: str | None = None
    ray_ready_seconds: float | None = None


@dataclass
class Cell:
    """One variant at one batch size: a sample per round."""

    seconds_per_batch: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    chain_seconds_per_query: list[float] = field(default_factory=list)
    """the service's own timing of the defense chain (``AccountStats.defense_seconds``)"""
    model_seconds_per_query: list[float] = field(default_factory=list)
    refused_after: list[int] = field(default_factory=list)
    """queries answered before a detector refused the measurement's account"""
    detected_after: list[int | None] = field(default_factory=list)
    """per measurement: queries sent when a detector flagged the account (``None``: never)"""
    stopped_early: int = 0
    """measurements cut short by ``--max-seconds``"""


@dataclass
class Variant:
    """A subject served through one transport."""

    subject: Subject
    transport: str
    service: ServiceAPI
    cells: dict[int, Cell] = field(default_factory=lambda: {b: Cell() for b in BATCH_SIZES})
    error: str | None = None
    sent: int = 0
    """queries sent on measured accounts"""
    charged: int = 0
    """queries those accounts' ledgers charged"""
    settlers: dict[int, Oracle] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{'inproc' if self.transport == 'in-process' else 'ray'}-{self.subject.key}"


def parse_defense(text: str) -> DefenseRequest:
    name, sep, raw = text.partition(":")
    name = name.strip()
    if not name:
        raise argparse.ArgumentTypeError(f"no defense name in {text!r}")
    params: Any = {}
    if sep:
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"bad JSON parameters in {text!r}: {exc}") from None
        if not isinstance(params, dict):
            raise argparse.ArgumentTypeError(f"parameters of {text!r} must be a JSON object")
    return DefenseRequest(name, params)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Per-query latency of every defense relative to the undefended victim, "
        "in process and through the Ray victim service."
    )
    parser.add_argument(
        "--defense",
        action="append",
        type=parse_defense,
        metavar="NAME[:JSON]",
        help="a defense to measure, e.g. mad or 'mad:{\"epsilon\": 1.0}' (repeatable); "
        "default: every registered defense with default parameters. "
        "The baseline none is always measured.",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds; default 5, or 2 with --quick"
    )
    parser.add_argument(
        "--queries",
        type=int,
        nargs=len(BATCH_SIZES),
        default=None,
        metavar="N",
        help="images per measurement (one fresh account) at batch "
        f"{', '.join(map(str, BATCH_SIZES))}; default {' '.join(map(str, DEFAULT_QUERIES))}, "
        f"or {' '.join(map(str, QUICK_QUERIES))} with --quick (at most the test set)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="cut a single measurement short after this many seconds (a very slow defense)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few rounds and few queries (a smoke test)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    queries = args.queries or (QUICK_QUERIES if args.quick else DEFAULT_QUERIES)
    if rounds < 1 or args.max_seconds <= 0 or any(q < 1 for q in queries):
        parser.error("--rounds, --queries and --max-seconds must be positive")
    requests = None
    if args.defense:
        requests = tuple(r for r in args.defense if not (r.name == BASELINE and not r.params))
    return Settings(
        requests=requests,
        rounds=rounds,
        queries=dict(zip(BATCH_SIZES, queries, strict=True)),
        max_seconds=args.max_seconds,
        quick=args.quick,
        out=args.out,
        markdown=args.markdown,
    )


def describe_error(exc: BaseException, limit: int = 2000) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(text: str, limit: int = 70) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def make_subject(request: DefenseRequest, num_classes: int) -> Subject:
    spec = PluginSpec(name=request.name, params=request.params)
    try:
        plugin = build_plugin(DEFENSES, request.name, request.params)
        key = plugin_label(request.name, plugin)
    except Exception as exc:
        suffix = json.dumps(request.params, sort_keys=True) if request.params else ""
        return Subject(f"{request.name}{suffix}", (spec,), error=describe_error(exc))
    subject = Subject(key, (spec,))
    try:
        chain = build_chain(subject.specs)
        for defense in chain.defenses:
            defense.check_task(num_classes)
    except Exception as exc:
        subject.error = describe_error(exc)
        return subject
    subject.chain = chain
    subject.stateful = chain.stateful
    subject.needs_preparation = chain.needs_preparation
    subject.needs_training = chain.needs_training
    return subject


def artefacts(cache_dir: Path) -> set[str]:
    return {p.name for p in cache_dir.glob("defense-*.pt")}


def prepare(
    subject: Subject,
    spec: VictimSpec,
    model: nn.Module,
    data: DataSplits,
    cache_dir: Path,
    console: Console,
) -> None:
    """Give the subject the model it serves: the victim, or the victim its chain prepared."""
    if subject.chain is None:
        return
    if not subject.needs_preparation:
        subject.model = model
        return
    before = artefacts(cache_dir)
    begin = time.perf_counter()
    try:
        # a copy: a training-time defense may change the weights it is given
        subject.model = defended_model(spec, copy.deepcopy(model), subject.chain, data, cache_dir)
    except Exception as exc:
        subject.error = describe_error(exc)
        console.log(f"[red]{subject.key}: preparation failed[/red]: {short(subject.error, 200)}")
        return
    finally:
        subject.prepare_seconds = time.perf_counter() - begin
    subject.artefacts_created = sorted(artefacts(cache_dir) - before)
    source = preparation_source(subject)
    console.log(f"{subject.key}: prepared in {subject.prepare_seconds:.1f} s ({source})")


def preparation_source(subject: Subject) -> str:
    if subject.chain is None or subject.prepare_seconds is None:
        return "—" if subject.chain is not None else "not built"
    if subject.error is not None:
        return "failed"
    if subject.artefacts_created:
        return "trained (now cached)"
    return "cache" if subject.needs_training else "built (nothing trained)"


def in_process_variant(subject: Subject, data: DataSplits) -> Variant | None:
    if subject.chain is None or subject.model is None:
        return None
    service = VictimService(
        subject.model, subject.chain, InputSpec(shape=data.input_shape), data.num_classes
    )
    return Variant(subject, "in-process", service)


def start_ray_variants(
    subjects: Sequence[Subject],
    spec: VictimSpec,
    model: nn.Module,
    data: DataSplits,
    cache_dir: Path,
    console: Console,
) -> tuple[list[Variant], float]:
    """Start one actor per prepared subject, all at once; return the live ones and the seconds
    until every actor answered (or failed)."""
    ready = [s for s in subjects if s.chain is not None and s.error is None]
    for s in subjects:
        if s not in ready:
            s.ray_error = "skipped: failed before serving in process"
    if not ready:
        return [], 0.0
    state = ray.put({k: v.detach().clone() for k, v in model.state_dict().items()})
    data_ref = ray.put(data) if any(s.needs_preparation for s in ready) else None
    # one torch thread per actor; the logical CPU reservation is a fraction so that every actor
    # fits the 2-CPU instance at once (only one actor is ever busy: the driver calls them in turn)
    actor_cpus = min(1.0, (RAY_NUM_CPUS - 0.5) / len(ready))
    begin = time.perf_counter()
    handles = {}
    for s in ready:
        handles[s.key] = start_victim_service(
            spec,
            s.specs,
            state,
            InputSpec(shape=data.input_shape),
            data.num_classes,
            num_cpus=actor_cpus,
            data=data_ref if s.needs_preparation else None,
            cache_dir=cache_dir if s.needs_preparation else None,
        )
    variants: list[Variant] = []
    for s in ready:
        proxy = RayServiceProxy(handles[s.key])
        try:
            proxy.public_spec()
        except Exception as exc:
            s.ray_error = describe_error(exc)
            console.log(f"[red]{s.key}: Ray actor failed[/red]: {short(s.ray_error, 200)}")
            continue
        s.ray_ready_seconds = time.perf_counter() - begin
        variants.append(Variant(s, "ray", proxy))
    return variants, time.perf_counter() - begin


def query_batches(data: DataSplits, batch_size: int, images: int) -> list[torch.Tensor]:
    """The first ``images`` test images (rounded down to whole batches, at least one batch)."""
    x = data.test.x
    count = max(1, min(images, int(x.shape[0])) // batch_size)
    return [x[i * batch_size : (i + 1) * batch_size].contiguous() for i in range(count)]


def run_account(
    variant: Variant, account: str, batches: Sequence[torch.Tensor], max_seconds: float
) -> tuple[int, float, int | None]:
    """Send ``batches`` on a fresh account: the calls answered, the seconds they took, and the
    queries answered before a refusal (``None`` if never refused). Other errors propagate."""
    variant.service.open_account(account, BUDGET)
    oracle = Oracle(variant.service, account)
    calls = 0
    refused: int | None = None
    start = time.perf_counter()
    elapsed = 0.0
    for x in batches:
        try:
            oracle.query(x)
        except QueryRefused:
            elapsed = time.perf_counter() - start
            refused = oracle.used
            break
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed > max_seconds:
            break
    return calls, elapsed, refused


def measure_once(
    variant: Variant, account: str, batches: Sequence[torch.Tensor], max_seconds: float
) -> None:
    b = int(batches[0].shape[0])
    cell = variant.cells[b]
    try:
        calls, elapsed, refused = run_account(variant, account, batches, max_seconds)
        stats = variant.service.account_stats(account)
    except Exception as exc:
        variant.error = describe_error(exc)
        return
    variant.sent += calls * b
    variant.charged += stats.used
    if refused is not None:
        cell.refused_after.append(refused)
    elif calls < len(batches):
        cell.stopped_early += 1
    cell.detected_after.append(stats.detected_after)
    if calls == 0:
        return
    cell.seconds_per_batch.append(elapsed / calls)
    cell.calls.append(calls)
    cell.chain_seconds_per_query.append(stats.defense_seconds / max(1, stats.used))
    cell.model_seconds_per_query.append(stats.model_seconds / max(1, stats.used))


def check_outputs(variants: Sequence[Variant], data: DataSplits) -> dict[str, Any]:
    """Undefended answers must equal the raw softmax; for the rest, record how far they move."""
    x = data.test.x[:CHECK_IMAGES].contiguous()
    model = next(v.subject.model for v in variants if v.subject.key == BASELINE)
    assert model is not None
    with torch.no_grad():
        reference = torch.softmax(model(x), dim=1)
    checks: dict[str, Any] = {}
    for v in variants:
        try:
            v.service.open_account("check", BUDGET)
            out = Oracle(v.service, "check").query(x)
        except QueryRefused as exc:
            checks[v.key] = {"refused": describe_error(exc)}
            continue
        except Exception as exc:
            v.error = describe_error(exc)
            checks[v.key] = {"error": v.error}
            continue
        ones = torch.ones(len(out))
        checks[v.key] = {
            "max_abs_diff_vs_raw": float((out - reference).abs().max()),
            "rows_sum_to_one": bool(torch.allclose(out.sum(dim=1), ones, atol=1e-4)),
            "argmax_agreement_vs_raw": float((out.argmax(1) == reference.argmax(1)).float().mean()),
        }
    for v in variants:
        entry = checks.get(v.key, {})
        if v.subject.key == BASELINE and entry.get("max_abs_diff_vs_raw", 1.0) > 1e-5:
            v.error = f"undefended answers differ from the raw softmax: {entry}"
    return checks


def warm_up(variants: Sequence[Variant], batches: dict[int, list[torch.Tensor]]) -> None:
    for b, queries in zip(BATCH_SIZES, WARMUP_QUERIES, strict=True):
        calls = max(1, queries // b)
        for v in variants:
            if v.error is not None:
                continue
            try:
                v.service.open_account(f"warmup-{b}", BUDGET)
                oracle = Oracle(v.service, f"warmup-{b}")
                for x in batches[b][:calls]:
                    oracle.query(x)
            except QueryRefused:
                pass
            except Exception as exc:
                v.error = describe_error(exc)


def settle(variant: Variant, x: torch.Tensor) -> None:
    """One untimed call on a side account right before a measurement, so the variant measured
    first after another one (or after a change of batch size) does not pay for the switch."""
    b = int(x.shape[0])
    oracle = variant.settlers.get(b)
    try:
        if oracle is None:
            variant.service.open_account(f"settle-{b}", BUDGET)
            oracle = variant.settlers[b] = Oracle(variant.service, f"settle-{b}")
        oracle.query(x)
    except QueryRefused:
        pass
    except Exception as exc:
        variant.error = describe_error(exc)


def measure(
    variants: Sequence[Variant],
    batches: dict[int, list[torch.Tensor]],
    settings: Settings,
    console: Console,
) -> None:
    for round_index in range(settings.rounds):
        begin = time.perf_counter()
        shift = round_index % len(variants)
        order = [*variants[shift:], *variants[:shift]]
        for b in BATCH_SIZES:
            for v in order:
                if v.error is None:
                    settle(v, batches[b][-1])
                if v.error is None:
                    account = f"round{round_index}-b{b}"
                    measure_once(v, account, batches[b], settings.max_seconds)
        seconds = time.perf_counter() - begin
        console.log(f"round {round_index + 1}/{settings.rounds} done in {seconds:.0f} s")


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(variants: Sequence[Variant]) -> dict[str, Any]:
    baselines = {v.transport: v for v in variants if v.subject.key == BASELINE}
    results: dict[str, Any] = {}
    for v in variants:
        base = baselines.get(v.transport)
        per_batch: dict[str, Any] = {}
        for b in BATCH_SIZES:
            cell = v.cells[b]
            median = median_or_none(cell.seconds_per_batch)
            base_median = median_or_none(base.cells[b].seconds_per_batch) if base else None
            ratio = median / base_median if median is not None and base_median else None
            paired = (
                [
                    s / r
                    for s, r in zip(
                        cell.seconds_per_batch, base.cells[b].seconds_per_batch, strict=False
                    )
                ]
                if base is not None
                else []
            )
            chain = median_or_none(cell.chain_seconds_per_query)
            model = median_or_none(cell.model_seconds_per_query)
            per_batch[str(b)] = {
                "seconds_per_batch_median": median,
                "seconds_per_batch_rounds": cell.seconds_per_batch,
                "us_per_query_median": 1e6 * median / b if median is not None else None,
                "ratio_vs_none": ratio,
                "paired_ratio_vs_none_median": median_or_none(paired),
                "calls_rounds": cell.calls,
                "chain_us_per_query_median": 1e6 * chain if chain is not None else None,
                "model_us_per_query_median": 1e6 * model if model is not None else None,
                "refused_after": cell.refused_after,
                "detected_after": cell.detected_after,
                "stopped_early_by_max_seconds": cell.stopped_early,
            }
        results[v.key] = {
            "defense": v.subject.key,
            "transport": v.transport,
            "error": v.error,
            "ledger": {"sent": v.sent, "charged": v.charged, "exact": v.sent == v.charged},
            "batches": per_batch,
        }
    return results


def subject_report(subject: Subject) -> dict[str, Any]:
    return {
        "specs": [s.model_dump(mode="json") for s in subject.specs],
        "error": subject.error,
        "stateful": subject.stateful,
        "needs_preparation": subject.needs_preparation,
        "needs_training": subject.needs_training,
        "prepare_seconds": subject.prepare_seconds,
        "preparation": preparation_source(subject),
        "artefacts_created": subject.artefacts_created,
        "ray_error": subject.ray_error,
        "ray_ready_seconds_after_start": subject.ray_ready_seconds,
    }


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def variant_note(entry: dict[str, Any], subject: dict[str, Any]) -> str:
    notes: list[str] = []
    error = entry.get("error") if entry else None
    if error:
        notes.append(f"error: {short(error)}")
    for b in BATCH_SIZES if entry else ():
        cell = entry["batches"][str(b)]
        if cell["refused_after"]:
            notes.append(f"B={b} refused after {min(cell['refused_after'])}+ queries")
        flagged = [n for n in cell["detected_after"] if n is not None]
        if flagged and not cell["refused_after"]:
            notes.append(
                f"B={b} flagged in {len(flagged)}/{len(cell['detected_after'])} rounds "
                f"(after {min(flagged)}–{max(flagged)} queries)"
            )
        if cell["stopped_early_by_max_seconds"]:
            notes.append(f"B={b} cut short by --max-seconds")
    if not entry and subject["error"]:
        notes.append(f"error: {short(subject['error'])}")
    elif not entry and subject["ray_error"]:
        notes.append(f"error: {short(subject['ray_error'])}")
    if entry and not entry["ledger"]["exact"]:
        notes.append("ledger mismatch")
    return "; ".join(notes)


def table_rows(
    summary: dict[str, Any], subjects: dict[str, Any]
) -> tuple[list[str], list[list[str]], int]:
    header = ["defense", "transport"]
    for b in BATCH_SIZES:
        header += [f"B={b} µs/query", f"B={b} ×none"]
    header += ["chain µs/query B=" + "/".join(map(str, BATCH_SIZES)), "note"]
    rows: list[list[str]] = []
    first_ray = 0
    for transport in TRANSPORTS:
        if transport == "ray":
            first_ray = len(rows)
        prefix = "inproc" if transport == "in-process" else "ray"
        for key, subject in subjects.items():
            entry = summary.get(f"{prefix}-{key}", {})
            row = [key, transport]
            chain_cells = []
            for b in BATCH_SIZES:
                cell = entry["batches"][str(b)] if entry else {}
                row += [
                    fmt(cell.get("us_per_query_median"), ",.1f"),
                    fmt(cell.get("ratio_vs_none"), ".2f"),
                ]
                chain_cells.append(fmt(cell.get("chain_us_per_query_median"), ".1f"))
            row += [" / ".join(chain_cells), variant_note(entry, subject)]
            rows.append(row)
    return header, rows, first_ray


def rich_table(summary: dict[str, Any], subjects: dict[str, Any], title: str) -> Table:
    header, rows, first_ray = table_rows(summary, subjects)
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        left = i < 2 or i == len(header) - 1
        table.add_column(name, justify="left" if left else "right", no_wrap=i < len(header) - 1)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == first_ray - 1)
    return table


def preparation_table(subjects: dict[str, Any]) -> Table:
    table = Table(title="Preparation (once, in process, before timing)", title_justify="left")
    for name in ("defense", "stateful", "prepares", "trains", "prepare s", "source", "Ray actor"):
        table.add_column(name, justify="right" if name == "prepare s" else "left")
    for key, s in subjects.items():
        table.add_row(*preparation_row(key, s))
    return table


def preparation_row(key: str, s: dict[str, Any]) -> list[str]:
    ray_state = "ok" if s["ray_ready_seconds_after_start"] is not None else "—"
    if s["ray_error"]:
        ray_state = short(s["ray_error"], 60)
    return [
        key,
        "yes" if s["stateful"] else "no",
        "yes" if s["needs_preparation"] else "no",
        "yes" if s["needs_training"] else "no",
        fmt(s["prepare_seconds"], ".2f"),
        s["preparation"] if not s["error"] else f"error: {short(s['error'], 60)}",
        ray_state,
    ]


def markdown(header: list[str], rows: list[list[str]], left: Sequence[int]) -> str:
    """A Markdown table; columns whose index is in ``left`` (negative counts from the end) are
    left-aligned, the rest right-aligned."""
    wanted = {i % len(header) for i in left}
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if i in wanted else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    command = shlex.join(
        ["python", *(sys.argv if argv is None else ["defense_overhead.py", *argv])]
    )
    console = Console() if sys.stdout.isatty() else Console(width=200)
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    loadavg_start = os.getloadavg()

    spec = VictimSpec()
    data = load_dataset(spec.dataset)
    cache_dir = default_victim_cache()
    console.log(f"victim {spec.dataset}/{spec.arch} key={spec.key()}")
    begin = time.perf_counter()
    victim = load_or_train(spec, data, cache_dir)
    console.log(
        f"victim {'loaded from cache' if victim.from_cache else 'trained'} in "
        f"{time.perf_counter() - begin:.1f} s, test accuracy {victim.test_accuracy:.4f}"
    )
    model = victim.model.eval()

    requests = settings.requests
    if requests is None:
        requests = tuple(DefenseRequest(n, {}) for n in DEFENSES.names() if n != BASELINE)
    subjects = [
        make_subject(r, data.num_classes) for r in (DefenseRequest(BASELINE, {}), *requests)
    ]
    seen: dict[str, int] = {}
    for s in subjects:  # the same chain asked for twice gets a distinct key
        seen[s.key] = seen.get(s.key, 0) + 1
        if seen[s.key] > 1:
            s.key = f"{s.key}#{seen[s.key]}"
    console.log(f"defenses: {', '.join(s.key for s in subjects)}")
    for s in subjects:
        prepare(s, spec, model, data, cache_dir, console)

    batches = {b: query_batches(data, b, settings.queries[b]) for b in BATCH_SIZES}
    variants: list[Variant] = [v for s in subjects if (v := in_process_variant(s, data))]
    ray.init(
        num_cpus=RAY_NUM_CPUS,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        logging_level=logging.ERROR,
    )
    try:
        ray_variants, ray_start_seconds = start_ray_variants(
            subjects, spec, model, data, cache_dir, console
        )
        console.log(f"{len(ray_variants)} Ray actors ready in {ray_start_seconds:.1f} s")
        variants += ray_variants
        checks = check_outputs(variants, data)
        warm_up(variants, batches)
        per_round = sum(len(batches[b]) for b in BATCH_SIZES)
        console.log(
            f"measuring {len(variants)} variants × {len(BATCH_SIZES)} batch sizes × "
            f"{settings.rounds} rounds ({per_round} calls per variant and round)"
        )
        measure(variants, batches, settings, console)
    finally:
        ray.shutdown()

    summary = summarise(variants)
    reports = {s.key: subject_report(s) for s in subjects}
    result = {
        "benchmark": "defense_overhead",
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "settings": {
            "defenses": [s.key for s in subjects],
            "batch_sizes": list(BATCH_SIZES),
            "queries_per_measurement": {str(b): len(batches[b]) * b for b in BATCH_SIZES},
            "calls_per_measurement": {str(b): len(batches[b]) for b in BATCH_SIZES},
            "rounds": settings.rounds,
            "max_seconds_per_measurement": settings.max_seconds,
            "quick": settings.quick,
            "accounts": "a fresh account per measurement (round × batch size × variant), "
            "sent the first N test images in order",
            "ray_init": {
                "num_cpus": RAY_NUM_CPUS,
                "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES,
            },
            "ray_actor_torch_threads": 1,
            "statistic": "median over rounds of seconds per oracle call; µs/query = that / B",
        },
        "victim": {
            "spec": spec.model_dump(mode="json"),
            "key": spec.key(),
            "test_accuracy": victim.test_accuracy,
            "from_cache": victim.from_cache,
            "train_seconds": victim.train_seconds,
        },
        "machine": machine_info(loadavg_start),
        "ray_actors_start_seconds": ray_start_seconds,
        "defenses": reports,
        "output_checks": checks,
        "variants": summary,
    }
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(result, indent=2) + "\n")

    title = (
        f"Defense overhead, {spec.dataset}/{spec.arch} victim — median of {settings.rounds} "
        "rounds, µs per query (×none = time vs none at the same batch and transport)"
    )
    console.print(rich_table(summary, reports, title))
    console.print(preparation_table(reports))
    if settings.markdown:
        header, rows, _ = table_rows(summary, reports)
        console.print(
            markdown(header, rows, (0, 1, -1)), markup=False, highlight=False, soft_wrap=True
        )
        console.print()
        prep_header = ["defense", "stateful", "prepares", "trains", "prepare s", "source", "Ray"]
        prep_rows = [preparation_row(k, s) for k, s in reports.items()]
        console.print(
            markdown(prep_header, prep_rows, (0, 1, 2, 3, 5, 6)),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    failed = [k for k, v in summary.items() if v["error"]] + [
        k for k, s in reports.items() if s["error"] or s["ray_error"]
    ]
    if failed:
        console.print(f"[red]errors[/red] (details in the JSON): {', '.join(sorted(set(failed)))}")
    console.log(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
