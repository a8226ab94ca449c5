"""Run a tournament on Ray: victims trained (or loaded from cache) once, one victim-service actor
per defended victim shared by all its attackers, one Ray task per match, and the driver as the
single MLflow writer. Matches already FINISHED in MLflow are skipped, so rerunning the same
command only plays what is missing.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import ObjectRef
from ray.actor import ActorHandle

from arena.data import DataSplits, arena_home, load_dataset
from arena.defenses.chain import build_chain
from arena.match_data import MatchData
from arena.oracle import InputSpec
from arena.record import MatchResult, result_json
from arena.referee import referee_match
from arena.specs import MatchSpec, VictimSpec
from arena.victims import (
    TrainedVictim,
    build_victim_model,
    defended_model,
    load_cached,
    save_victim,
    train_victim,
)
from orchestration.budget_curves import (
    BudgetCurve,
    budget_curves,
    curve_metrics,
    curves_dict,
    curves_markdown,
)
from orchestration.config import RaySettings, TournamentConfig
from orchestration.leaderboard import (
    LeaderboardRow,
    build_leaderboard,
    leaderboard_dict,
    markdown_table,
    protection_utility_plot,
)
from orchestration.ray_leftovers import clean_dead_drivers, record_local_ray
from orchestration.ray_service import RayServiceProxy, start_victim_service
from orchestration.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchFailure:
    """A match that raised; recorded as a FAILED run with the reason and retried on rerun."""

    match_key: str
    reason: str


@dataclass
class TournamentOutcome:
    """What a tournament run produced."""

    parent_run_id: str
    results: list[MatchResult]
    leaderboard: list[LeaderboardRow]
    curves: list[BudgetCurve]
    played: int
    skipped: int
    failures: list[MatchFailure] = field(default_factory=list)
    victims: dict[str, TrainedVictimInfo] = field(default_factory=dict)
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class TrainedVictimInfo:
    spec: VictimSpec
    test_accuracy: float
    train_seconds: float
    from_cache: bool


ProgressHook = Callable[[MatchSpec, MatchResult | MatchFailure], None]


@ray.remote
def _train_victim_task(
    spec: VictimSpec, data: DataSplits, threads: int, cache_dir: Path
) -> TrainedVictim:
    torch.set_num_threads(threads)
    return train_victim(spec, data, cache_dir)


@ray.remote
def _prepare_defenses_task(
    spec: MatchSpec, state: dict[str, torch.Tensor], data: DataSplits, cache_dir: Path, threads: int
) -> None:
    """Train (and cache) what a defended victim's defenses need, once, before serving starts."""
    torch.set_num_threads(threads)
    model = build_victim_model(spec.victim, data.input_shape, data.num_classes, state)
    defended_model(spec.victim, model, build_chain(spec.defenses), data, cache_dir)


def prepare_defenses(
    ray_settings: RaySettings,
    pending: list[MatchSpec],
    weights: dict[str, ObjectRef[Any]],
    data_refs: dict[str, ObjectRef[Any]],
    cache_dir: Path,
) -> None:
    """Run training-time defense preparation in parallel Ray tasks, one per victim and set of
    training defenses, so the victim-service actors only load from the cache.

    Chains that differ only in serving parameters (say two thresholds) share one task; the others
    load what it cached when their actors start.
    """
    first: dict[tuple[str, tuple[str, ...]], MatchSpec] = {}
    for spec in pending:
        chain = build_chain(spec.defenses)
        if chain.needs_training:
            pairs = zip(spec.defenses, chain.defenses, strict=True)
            names = tuple(s.name for s, d in pairs if d.needs_training)
            first.setdefault((spec.victim.key(), names), spec)
    threads = ray_settings.cpus_per_match
    task = _prepare_defenses_task.options(num_cpus=threads)
    refs = [
        task.remote(
            spec, weights[spec.victim.key()], data_refs[spec.victim.dataset], cache_dir, threads
        )
        for spec in first.values()
    ]
    ray.get(refs)


@ray.remote
def play_match_task(
    spec: MatchSpec,
    service: ActorHandle[Any],
    data: MatchData,
    threads: int,
    timeout_s: float = 300.0,
) -> MatchResult | MatchFailure:
    torch.set_num_threads(threads)
    try:
        return referee_match(spec, RayServiceProxy(service, timeout_s), data)
    except Exception as exc:  # reported as a value: one failing match must not sink the rest
        detail = traceback.format_exc(limit=8)
        return MatchFailure(spec.key(), f"{type(exc).__name__}: {exc}\n{detail}")


def service_for(
    spec: MatchSpec,
    ray_settings: RaySettings,
    weights: ObjectRef[Any],
    dataset: DataSplits,
    data_ref: ObjectRef[Any],
    cache_dir: Path,
    name: str | None = None,
    ledger_path: Path | None = None,
) -> ActorHandle[Any]:
    """Start the victim-service actor for a match's victim and defense chain (the data goes to
    the actor only when the chain prepares something). With a ledger file it restarts up to
    ``victim_max_restarts`` times."""
    return start_victim_service(
        spec.victim,
        spec.defenses,
        weights,
        InputSpec(shape=dataset.input_shape),
        dataset.num_classes,
        num_cpus=ray_settings.cpus_per_victim,
        num_gpus=ray_settings.gpus_per_victim,
        name=name,
        data=data_ref if build_chain(spec.defenses).needs_preparation else None,
        cache_dir=cache_dir,
        ledger_path=ledger_path,
        max_restarts=ray_settings.victim_max_restarts if ledger_path is not None else 0,
        max_pending_calls=ray_settings.victim_queue_cap,
    )


def ledger_dir(cache_dir: Path, run_id: str) -> Path:
    """This driver run's victim ledgers (and audit logs). Fresh for every run: a rerun plays an
    unfinished match again from the start, under the same attacker identities."""
    return cache_dir.parent / "ledgers" / f"{run_id}-{uuid.uuid4().hex[:8]}"


def ensure_victims(
    ray_settings: RaySettings,
    victims: list[VictimSpec],
    data: dict[str, DataSplits],
    data_refs: dict[str, ObjectRef[Any]],
    cache_dir: Path,
) -> dict[str, TrainedVictim]:
    """Load cached victims in the driver; train the others in parallel Ray tasks and cache them."""
    ready: dict[str, TrainedVictim] = {}
    training: dict[str, ObjectRef[Any]] = {}
    for spec in victims:
        cached = load_cached(spec, data[spec.dataset], cache_dir)
        if cached is not None:
            ready[spec.key()] = cached
        else:
            threads = ray_settings.cpus_per_match
            task = _train_victim_task.options(num_cpus=threads)
            training[spec.key()] = task.remote(spec, data_refs[spec.dataset], threads, cache_dir)
    for key, ref in training.items():
        victim: TrainedVictim = ray.get(ref)
        save_victim(victim, cache_dir)
        ready[key] = victim
    return ready


def start_ray(ray_settings: RaySettings, address: str | None) -> bool:
    """Connect to a cluster or start a local Ray; returns True when this call started it.

    Before starting a local Ray it stops what killed drivers left of theirs, and it records
    this driver's so the next one can (:mod:`orchestration.ray_leftovers`)."""
    if ray.is_initialized():
        return False
    target = address or ray_settings.address
    if target is None:
        clean_dead_drivers(arena_home())
    store = ray_settings.object_store_mb
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        address=target,
        include_dashboard=False,
        logging_level=logging.ERROR,
        object_store_memory=store * 1024 * 1024 if store and target is None else None,
    )
    # ray.init installs its own SIGTERM handler (log and abort); keep the caller's, which lets
    # the driver close its MLflow runs and stop its victim services first
    if callable(on_sigterm):
        signal.signal(signal.SIGTERM, on_sigterm)
    if target is None:
        record_local_ray(arena_home())
    return True


def run_tournament(
    config: TournamentConfig,
    tracker: Tracker,
    cache_dir: Path,
    address: str | None = None,
    on_result: ProgressHook | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> TournamentOutcome:
    """Play every missing match of ``config`` on Ray and log everything to MLflow."""
    started = time.perf_counter()
    specs = config.matches()
    parent = tracker.open_tournament(config.name, config.model_dump(mode="json"))
    failures: list[MatchFailure] = []
    victims_info: dict[str, TrainedVictimInfo] = {}
    status = "FAILED"
    started_ray = False
    actors: list[ActorHandle[Any]] = []
    try:  # from here on every exit gives the parent run its true status
        done = tracker.finished_results(parent)
        pending = [s for s in specs if s.key() not in done]
        if on_start:
            on_start(len(pending), len(specs) - len(pending))
        results: dict[str, MatchResult] = {k: r for k, r in done.items()}
        if pending:
            torch.set_num_threads(config.ray.cpus_per_match)
            # data first: a missing dataset is reported before any Ray process starts
            data = {name: load_dataset(name) for name in {s.victim.dataset for s in pending}}
            started_ray = start_ray(config.ray, address)
            data_refs = {name: ray.put(split) for name, split in data.items()}
            match_data = {
                (name, pool): ray.put(MatchData.from_splits(data[name], pool))
                for name, pool in {(s.victim.dataset, s.pool) for s in pending}
            }
            victim_specs = list({s.victim.key(): s.victim for s in pending}.values())
            trained = ensure_victims(config.ray, victim_specs, data, data_refs, cache_dir)
            victims_info = {
                k: TrainedVictimInfo(v.spec, v.test_accuracy, v.train_seconds, v.from_cache)
                for k, v in trained.items()
            }
            weights = {k: ray.put(v.model.state_dict()) for k, v in trained.items()}
            prepare_defenses(config.ray, pending, weights, data_refs, cache_dir)

            services: dict[tuple[str, tuple[str, ...]], ActorHandle[Any]] = {}
            running: dict[ObjectRef[Any], MatchSpec] = {}
            ledgers = ledger_dir(cache_dir, parent)
            for spec in pending:
                service_key = (spec.victim.key(), tuple(d.model_dump_json() for d in spec.defenses))
                if service_key not in services:
                    services[service_key] = service_for(
                        spec,
                        config.ray,
                        weights[spec.victim.key()],
                        data[spec.victim.dataset],
                        data_refs[spec.victim.dataset],
                        cache_dir,
                        name=f"victim-{parent[:8]}-{len(services)}",
                        ledger_path=ledgers / f"victim-{len(services)}.sqlite3",
                    )
                    actors.append(services[service_key])
                task = play_match_task.options(num_cpus=config.ray.cpus_per_match)
                ref = task.remote(
                    spec,
                    services[service_key],
                    match_data[(spec.victim.dataset, spec.pool)],
                    config.ray.cpus_per_match,
                    config.ray.victim_timeout_s,
                )
                running[ref] = spec

            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                spec = running.pop(ready[0])
                try:
                    outcome: MatchResult | MatchFailure = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    outcome = MatchFailure(spec.key(), f"{type(exc).__name__}: {exc}")
                if isinstance(outcome, MatchResult):
                    tracker.log_match(parent, spec, outcome)
                    results[spec.key()] = outcome
                else:
                    tracker.log_failure(parent, spec, outcome.reason)
                    failures.append(outcome)
                if on_result:
                    on_result(spec, outcome)
        ordered = [results[s.key()] for s in specs if s.key() in results]
        board = build_leaderboard(ordered)
        curves = budget_curves(ordered, config.queries_to_x)
        _log_summary(
            tracker, parent, config, ordered, board, curves, len(pending), victims_info, started
        )
        status = "FINISHED" if not failures else "FAILED"
        return TournamentOutcome(
            parent_run_id=parent,
            results=ordered,
            leaderboard=board,
            curves=curves,
            played=len(pending) - len(failures),
            skipped=len(specs) - len(pending),
            failures=failures,
            victims=victims_info,
            wall_seconds=time.perf_counter() - started,
        )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        release(actors, started_ray, tracker, parent, status)


def release(
    actors: list[ActorHandle[Any]], started_ray: bool, tracker: Tracker, parent: str, status: str
) -> None:
    """End a driver's run on every exit path: stop its victim services, shut down the Ray it
    started, and give the MLflow parent run its true status."""
    for actor in actors:
        ray.kill(actor)
    if started_ray:
        ray.shutdown()
    tracker.close(parent, status)


def _log_summary(
    tracker: Tracker,
    parent: str,
    config: TournamentConfig,
    results: list[MatchResult],
    board: list[LeaderboardRow],
    curves: list[BudgetCurve],
    played: int,
    victims: dict[str, TrainedVictimInfo],
    started: float,
) -> None:
    metrics: dict[str, float] = {
        "matches": len(results),
        "matches_played_this_run": played,
        "wall_seconds_this_run": time.perf_counter() - started,
        **curve_metrics(curves),
    }
    curve_files: dict[str, str | dict[str, Any]] = (
        {
            "budget_curves.md": curves_markdown(curves, config.queries_to_x),
            "budget_curves.json": curves_dict(curves, config.queries_to_x),
        }
        if curves
        else {}
    )
    for info in victims.values():
        metrics[f"victim_accuracy.{info.spec.key()}"] = info.test_accuracy
        if not info.from_cache:
            metrics[f"victim_train_seconds.{info.spec.key()}"] = info.train_seconds
    with tempfile.TemporaryDirectory() as tmp:
        plot = protection_utility_plot(
            board, Path(tmp) / "protection_vs_utility.png", f"{config.name}: protection vs utility"
        )
        tracker.log_summary(
            parent,
            metrics,
            {
                "leaderboard.md": markdown_table(board),
                "leaderboard.json": leaderboard_dict(board),
                "matches.json": result_json(results),
                **curve_files,
                "plot": plot,
            },
        )
