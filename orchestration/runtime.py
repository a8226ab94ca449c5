"""The match runtime: everything that turns match specs into results on Ray, in one place.

A tournament and a tuning study are both loops over a :class:`MatchRuntime`: it loads the data
(before any Ray process starts, so a missing dataset is one clear error), starts or joins Ray,
puts each piece of data in the object store once and only when a task needs it, loads or trains
each victim once, prepares training-time defenses once per victim, owns one victim-service actor
per (victim, defense chain) or per caller label, plays each match as a Ray task (no more at once
than there are match slots: :meth:`MatchRuntime.in_flight_cap`), and hands back results as they
finish. As a context manager it stops its actors and the Ray it started on every exit path.

Asked to keep substitutes (``tracking.log_models``), each match task also returns the substitute
it scored, on the CPU, beside its record; the driver logs it as that match finishes and drops it.
"""

from __future__ import annotations

import logging
import signal
import traceback
import uuid
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import ObjectRef
from ray.actor import ActorHandle
from torch import nn

from arena.attacker import ATTACKS
from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.devices import DeviceUnavailable
from arena.home import ArenaHome
from arena.knowledge import API, DATA_ACCESS
from arena.match_data import MatchData
from arena.oracle import InputSpec
from arena.plugins import PluginSource, ensure_plugins, sources_for
from arena.pool_source import pool_dataset
from arena.record import MatchResult
from arena.referee import referee_match
from arena.specs import MatchSpec, VictimSpec
from arena.victims import (
    TrainedVictim,
    build_victim_model,
    defended_model,
    load_cached,
    load_or_train,
    save_victim,
    train_victim,
)
from orchestration.config import RaySettings
from orchestration.ray_leftovers import clean_dead_drivers, record_local_ray
from orchestration.ray_service import RayServiceProxy, start_victim_service
from orchestration.resources import (
    assigned_device,
    cluster_gpus,
    defense_preparation_resources,
    gpu_shortfall,
    match_resources,
    victim_service_resources,
    victim_training_resources,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchFailure:
    """A match that raised; recorded as a FAILED run with the reason and retried on rerun."""

    match_key: str
    reason: str


Outcome = MatchResult | MatchFailure
PreparationKey = tuple[str, tuple[str, ...]]
"""a victim's key and the JSON of the defenses prepared for it"""


@dataclass(frozen=True)
class Finished:
    """One match that finished, with the label its caller submitted it under."""

    spec: MatchSpec
    outcome: Outcome
    label: Hashable
    substitute: nn.Module | None = None
    """the substitute the match scored, on the CPU (only when the runtime keeps substitutes)"""


@dataclass(frozen=True)
class WithSubstitute:
    """What a match task returns when asked to keep its substitute: the record (never holding
    the model: it stays flat) and the substitute as scored, moved to the CPU."""

    result: MatchResult
    substitute: nn.Module


@ray.remote
def _train_victim_task(
    spec: VictimSpec,
    data: DataSplits,
    threads: int,
    cache_dir: Path,
    plugins: tuple[PluginSource, ...],
) -> TrainedVictim:
    """Train one victim on the device its task was given (``ray.gpus_per_victim``)."""
    ensure_plugins(plugins)
    torch.set_num_threads(threads)
    return train_victim(spec, data, cache_dir, device=str(assigned_device()))


@ray.remote
def _prepare_defenses_task(
    spec: MatchSpec,
    state: dict[str, torch.Tensor],
    data: DataSplits,
    cache_dir: Path,
    threads: int,
    plugins: tuple[PluginSource, ...],
) -> None:
    """Train (and cache) what a defended victim's defenses need, once, before serving starts."""
    ensure_plugins(plugins)
    torch.set_num_threads(threads)
    model = build_victim_model(spec.victim, data.input_shape, data.num_classes, state)
    defended_model(spec.victim, model, build_chain(spec.defenses), data, cache_dir)


def data_key(spec: MatchSpec) -> tuple[str, str, str]:
    """Which match data a match plays on: its dataset, its pool, and ``data_access`` when its
    attack plays that threat model (its data carries the victim's training split) or ``api``
    (every other match shares data without it)."""
    threat = ATTACKS.get(spec.attack.name).threat_model
    return spec.victim.dataset, spec.pool, DATA_ACCESS if threat == DATA_ACCESS else API


@ray.remote
def play_match_task(
    spec: MatchSpec,
    service: ActorHandle[Any],
    data: MatchData,
    threads: int,
    timeout_s: float = 300.0,
    mixed_precision: bool = False,
    plugins: tuple[PluginSource, ...] = (),
    keep_substitute: bool = False,
) -> Outcome | WithSubstitute:
    """Play one match; its thief computes on the device this task was given
    (``ray.gpus_per_match``), the victim answers from its own actor. ``keep_substitute``: return
    the scored substitute too (on the CPU, so a driver without a GPU can take it)."""
    torch.set_num_threads(threads)
    kept: list[nn.Module] = []
    try:
        ensure_plugins(plugins)
        device = str(assigned_device())
        proxy = RayServiceProxy(service, timeout_s)
        result = referee_match(
            spec,
            proxy,
            data,
            device=device,
            mixed_precision=mixed_precision,
            keep_substitute=kept.append if keep_substitute else None,
        )
        return WithSubstitute(result, kept[0].cpu()) if kept else result
    except Exception as exc:  # reported as a value: one failing match must not sink the rest
        detail = traceback.format_exc(limit=8)
        return MatchFailure(spec.key(), f"{type(exc).__name__}: {exc}\n{detail}")


def start_ray(ray_settings: RaySettings, home: ArenaHome, address: str | None) -> bool:
    """Connect to a cluster or start a local Ray; returns True when this call started it.

    Before starting a local Ray it stops what killed drivers left of theirs, and it records
    this driver's so the next one can (:mod:`orchestration.ray_leftovers`)."""
    if ray.is_initialized():
        return False
    target = address or ray_settings.address
    if target is None:
        clean_dead_drivers(home.root)
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
        record_local_ray(home.root)
    return True


class MatchRuntime:
    """Plays match specs on Ray for one driver run (see the module docstring).

    ``run_id`` names the run's victim actors and its ledger folder under ``home.ledgers``: fresh
    for every driver run, so a rerun plays an unfinished match again from the start.
    """

    def __init__(
        self,
        ray_settings: RaySettings,
        home: ArenaHome,
        run_id: str,
        address: str | None = None,
        plugins: Sequence[str] = (),
        download: bool = False,
        keep_substitutes: bool = False,
    ) -> None:
        self.settings = ray_settings
        self.home = home
        self.address = address
        self.download = download
        """fetch missing datasets (the config's ``download: true``)"""
        self.keep_substitutes = keep_substitutes
        """hand back each match's scored substitute with its record (``tracking.log_models``)"""
        self.run_id = run_id
        self.ledgers = home.ledgers / f"{run_id}-{uuid.uuid4().hex[:8]}"
        self._started_ray = False
        self._ray_ready = False
        self._data: dict[str, DataSplits] = {}
        """victims' datasets"""
        self._loaded: dict[str, DataSplits] = {}
        """every dataset loaded, pool sources included (loaded once)"""
        self._data_refs: dict[str, ObjectRef[Any]] = {}
        """victims' datasets in the object store (:meth:`_data_ref`)"""
        self._match_data: dict[tuple[str, str, str], ObjectRef[Any]] = {}
        """match data by :func:`data_key`: dataset, pool, and whether the training split rides"""
        self.victims: dict[str, TrainedVictim] = {}
        """every victim this runtime serves, by victim key"""
        self._weights: dict[str, ObjectRef[Any]] = {}
        self._prepared: set[PreparationKey] = set()
        self._preparing: dict[PreparationKey, ObjectRef[Any]] = {}
        """preparations started and not yet seen to finish"""
        self._preparation_failed: dict[PreparationKey, str] = {}
        self._held: dict[PreparationKey, list[tuple[MatchSpec, Hashable]]] = {}
        """matches submitted while the preparation they need runs"""
        self._failed: deque[Finished] = deque()
        """matches failed without playing (their preparation failed), not yet handed back"""
        self._services: dict[Hashable, ActorHandle[Any]] = {}
        self._actors_started = 0
        self._running: dict[ObjectRef[Any], tuple[MatchSpec, Hashable]] = {}
        self._ready: deque[tuple[MatchSpec, Hashable]] = deque()
        """matches free to play, waiting for a slot (:meth:`in_flight_cap`)"""
        self.plugins = sources_for(plugins)
        """the config's plug-ins as the driver loaded them, loaded again in every task and actor"""

    def __enter__(self) -> MatchRuntime:
        return self

    def __exit__(self, *_: object) -> None:
        for actor in self._services.values():
            ray.kill(actor)
        self._services.clear()
        if self._started_ray:
            ray.shutdown()

    # ---- what the matches need, each made once ------------------------------------------------

    def ensure(self, specs: Sequence[MatchSpec]) -> None:
        """Data, Ray and victims for these matches, and their defenses' preparation started (what
        exists is kept)."""
        if not specs:
            return
        granted = {  # built before Ray starts: a pool that cannot be granted is one clear error
            (name, pool, threat): MatchData.from_splits(
                self._dataset(name), pool, self._pool_source(pool), threat
            )
            for name, pool, threat in {data_key(s) for s in specs}
            if (name, pool, threat) not in self._match_data
        }
        self._ensure_victims([s.victim for s in specs])
        for key, data in granted.items():
            self._match_data[key] = ray.put(data)
        self._prepare_defenses(specs)

    def dataset(self, name: str) -> DataSplits:
        """A dataset as this runtime loaded it (loaded now if it was not)."""
        return self._load(name)

    def _dataset(self, name: str) -> DataSplits:
        """A victim's dataset (whole in the object store once Ray runs)."""
        self._data[name] = self._load(name)
        return self._data[name]

    def _pool_source(self, pool: str) -> DataSplits | None:
        """The dataset a ``dataset:NAME`` pool draws from; None for other pools."""
        name = pool_dataset(pool)
        return None if name is None else self._load(name)

    def _load(self, name: str) -> DataSplits:
        """A dataset, loaded once (downloaded only if the config says ``download``)."""
        if name not in self._loaded:
            self._loaded[name] = load_dataset(name, self.home.data_dir, self.download)
        return self._loaded[name]

    def ensure_victim(self, victim: VictimSpec) -> TrainedVictim:
        """Data, Ray and the trained victim, before any defense is chosen (a tuning study)."""
        self._ensure_victims([victim])
        return self.victims[victim.key()]

    def _ensure_victims(self, victims: list[VictimSpec]) -> None:
        """The datasets (loaded before Ray starts: a missing one is a clear error, not a failed
        task), Ray, the data in the object store once, and the victims: cached ones loaded in
        the driver, the others trained in parallel Ray tasks."""
        for name in {v.dataset for v in victims}:
            self._dataset(name)
        for spec in {v.key(): v for v in victims if v.checkpoint is not None}.values():
            # read here, before Ray: a checkpoint that does not fit is one clear error, and its
            # file need only exist on the driver (actors rebuild it from its state)
            if spec.key() not in self.victims:
                splits = self._data[spec.dataset]
                self.victims[spec.key()] = load_or_train(spec, splits, self.home.victims)
        if not self._ray_ready:
            torch.set_num_threads(self.settings.cpus_per_match)
            self._started_ray = start_ray(self.settings, self.home, self.address)
            self._check_gpus()
            self._ray_ready = True
        training: dict[str, ObjectRef[Any]] = {}
        threads = self.settings.cpus_per_match
        for spec in {v.key(): v for v in victims}.values():
            if spec.key() in self.victims:
                continue
            cached = load_cached(spec, self._data[spec.dataset], self.home.victims)
            if cached is not None:
                self.victims[spec.key()] = cached
            else:
                task = _train_victim_task.options(**victim_training_resources(self.settings))
                data = self._data_ref(spec.dataset)
                training[spec.key()] = task.remote(
                    spec, data, threads, self.home.victims, self.plugins
                )
        for key, ref in training.items():
            victim: TrainedVictim = ray.get(ref)
            save_victim(victim, self.home.victims)
            self.victims[key] = victim
        for key, victim in self.victims.items():
            if key not in self._weights:
                self._weights[key] = ray.put(victim.model.state_dict())

    def _data_ref(self, name: str) -> ObjectRef[Any]:
        """A victim's whole dataset in the object store, put there the first time a task or an
        actor needs it (training a victim, preparing defenses); matches get only their
        :class:`MatchData`, so a tournament of cached victims never ships the training split."""
        if name not in self._data_refs:
            self._data_refs[name] = ray.put(self._data[name])
        return self._data_refs[name]

    def _check_gpus(self) -> None:
        """GPUs the settings ask for must exist: on a Ray this runtime started (which never
        gains nodes) tasks asking for missing GPUs would wait for ever, so that is an error; a
        cluster it joined may still add GPU nodes, so there it is a warning."""
        shortfall = gpu_shortfall(self.settings, cluster_gpus())
        if shortfall is None:
            return
        if self._started_ray:
            raise DeviceUnavailable(f"{shortfall}: no task asking for them could ever start")
        log.warning("%s: tasks asking for GPUs wait until GPU nodes join", shortfall)

    def _preparation_key(self, spec: MatchSpec) -> PreparationKey | None:
        """What ``spec``'s chain must have prepared before it is served (its victim and its
        training-time or model-building defenses), or None when it needs nothing."""
        chain = build_chain(spec.defenses)
        if not chain.builds_ahead:
            return None
        pairs = zip(spec.defenses, chain.defenses, strict=True)
        trained = tuple(
            s.model_dump_json() for s, d in pairs if d.needs_training or d.builds_models
        )
        return spec.victim.key(), trained

    def _prepare_defenses(self, specs: Sequence[MatchSpec]) -> None:
        """Start training-time defense preparation (and defenses that build auxiliary models) in
        parallel Ray tasks, one per victim and set of such defenses, so the victim-service
        actors only load from the cache. Chains whose such defenses are the same (say two
        serving thresholds, or one fingerprint in two chains) share one task. Nothing waits
        here: a match that needs a preparation is held back until it is done (see
        :meth:`submit`) while every other match plays."""
        first: dict[PreparationKey, MatchSpec] = {}
        for spec in specs:
            key = self._preparation_key(spec)
            if key is not None and key not in self._prepared and key not in self._preparing:
                first.setdefault(key, spec)
        threads = self.settings.cpus_per_match
        task = _prepare_defenses_task.options(**defense_preparation_resources(self.settings))
        for key, spec in first.items():
            self._preparing[key] = task.remote(
                spec,
                self._weights[spec.victim.key()],
                self._data_ref(spec.victim.dataset),
                self.home.victims,
                threads,
                self.plugins,
            )

    def service(self, spec: MatchSpec, label: Hashable | None = None) -> ActorHandle[Any]:
        """The victim-service actor serving ``spec``'s victim and chain (started on first use):
        one per (victim, chain), or one per ``label`` when the caller wants its own."""
        chain = tuple(d.model_dump_json() for d in spec.defenses)
        key = label if label is not None else (spec.victim.key(), chain)
        if key not in self._services:
            data = self._data[spec.victim.dataset]
            ledger = self.ledgers / f"victim-{self._actors_started}.sqlite3"
            prepares = build_chain(spec.defenses).needs_preparation
            self._services[key] = start_victim_service(
                spec.victim,
                spec.defenses,
                self._weights[spec.victim.key()],
                InputSpec(shape=data.input_shape),
                data.num_classes,
                **victim_service_resources(self.settings),
                name=f"victim-{self.run_id[:8]}-{self._actors_started}",
                data=self._data_ref(spec.victim.dataset) if prepares else None,
                cache_dir=self.home.victims,
                ledger_path=ledger,
                max_restarts=self.settings.victim_max_restarts,
                max_pending_calls=self.settings.victim_queue_cap,
                plugins=self.plugins,
            )
            self._actors_started += 1
        return self._services[key]

    def stop_service(self, label: Hashable) -> None:
        """Stop the actor started for ``label`` (a tuning trial's, once its matches are done)."""
        actor = self._services.pop(label, None)
        if actor is not None:
            ray.kill(actor)

    # ---- playing --------------------------------------------------------------------------------

    def submit(self, spec: MatchSpec, label: Hashable | None = None) -> None:
        """Play ``spec`` as a Ray task against its victim service (see :meth:`service`), or hold
        it until the preparation its defenses need is done (its actor would otherwise train them
        a second time); a failed preparation fails the matches that needed it, and only those."""
        self.ensure([spec])
        key = self._preparation_key(spec)
        if key in self._preparation_failed:
            self._failed.append(self._unprepared(spec, label, self._preparation_failed[key]))
        elif key in self._preparing:
            self._held.setdefault(key, []).append((spec, label))
        else:
            self._launch(spec, label)

    def in_flight_cap(self) -> int:
        """How many match tasks may run at once: ``ray.matches_in_flight``, or as many as the
        cluster's CPUs hold at ``cpus_per_match`` each (read each time: a cluster may grow).

        Ray's own placement does not bound this: a match blocked on its victim in ``ray.get``
        gives its CPU back, and Ray starts another match on it."""
        if self.settings.matches_in_flight is not None:
            return self.settings.matches_in_flight
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        return max(1, int(resources.get("CPU", 1) // self.settings.cpus_per_match))

    def _launch(self, spec: MatchSpec, label: Hashable) -> None:
        """Queue a match that may play now, and start as many queued ones as there are slots.
        Its victim service starts now, so it is up by the time the match gets a slot."""
        self.service(spec, label)
        self._ready.append((spec, label))
        self._fill_slots()

    def _fill_slots(self) -> None:
        if not self._ready:
            return
        cap = self.in_flight_cap()
        while self._ready and len(self._running) < cap:
            self._start(*self._ready.popleft())

    def _start(self, spec: MatchSpec, label: Hashable) -> None:
        threads = self.settings.cpus_per_match
        ref = play_match_task.options(**match_resources(self.settings)).remote(
            spec,
            self.service(spec, label),
            self._match_data[data_key(spec)],
            threads,
            self.settings.victim_timeout_s,
            self.settings.mixed_precision,
            self.plugins,
            self.keep_substitutes,
        )
        self._running[ref] = (spec, label)

    @staticmethod
    def _unprepared(spec: MatchSpec, label: Hashable, reason: str) -> Finished:
        return Finished(
            spec, MatchFailure(spec.key(), f"preparing its defenses failed: {reason}"), label
        )

    @property
    def running(self) -> int:
        """Matches submitted and not yet handed back (held ones included)."""
        held = sum(map(len, self._held.values()))
        return len(self._running) + len(self._ready) + held + len(self._failed)

    @property
    def playing(self) -> int:
        """Match tasks running now (at most :meth:`in_flight_cap`)."""
        return len(self._running)

    def next_finished(self) -> Finished:
        """Wait for the next match to finish (one must be running), launching held matches as
        their preparations finish."""
        while not self._failed:
            preparing = {self._preparing[key]: key for key in self._held}
            ready, _ = ray.wait([*self._running, *preparing], num_returns=1)
            if ready[0] in self._running:
                return self._collect(ready[0])
            key = preparing[ready[0]]
            del self._preparing[key]
            waiting = self._held.pop(key)
            try:
                ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                self._preparation_failed[key] = f"{type(exc).__name__}: {exc}"
                self._failed.extend(self._unprepared(s, lb, str(exc)) for s, lb in waiting)
                continue
            self._prepared.add(key)
            for spec, label in waiting:
                self._launch(spec, label)
        return self._failed.popleft()

    def _collect(self, ref: ObjectRef[Any]) -> Finished:
        spec, label = self._running.pop(ref)
        self._fill_slots()
        try:
            outcome: Outcome | WithSubstitute = ray.get(ref)
        except ray.exceptions.RayError as exc:
            outcome = MatchFailure(spec.key(), f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, WithSubstitute):
            return Finished(spec, outcome.result, label, outcome.substitute)
        return Finished(spec, outcome, label)

    def as_finished(self) -> Iterator[Finished]:
        """Every running match, in the order they finish."""
        while self.running:
            yield self.next_finished()
