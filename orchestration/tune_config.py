"""Tuning-study configs: one defense family, its search space, an attack suite and a utility
floor, validated completely (every problem at once, by dotted path) before anything starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

import agents  # noqa: F401  (registers the built-in attacks)
from arena.defenses import DEFENSES, Choice, FloatRange, IntRange, ParamSpace
from arena.errors import brief
from arena.protection_axes import AxisName
from arena.specs import BenignSpec, MatchSpec, PluginSpec, VictimSpec
from arena.versions import versioned_match
from orchestration.config import (
    Attacks,
    BestResponse,
    Lineup,
    Name,
    PluginAt,
    Plugins,
    RaySettings,
    TrackingSettings,
    defense_problems,
    lineup_problems,
    parse_document,
    plugin_problems,
    read_yaml,
)
from orchestration.study_storage import named_storage

TUNING_BEST_RESPONSE_TRIALS = 4
"""candidates each thief of a tuning trial scores by default (its own recipe and three more)"""
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
"""RDB URLs Optuna accepts; anything else must be a journal file path"""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RangeOverride(_Strict):
    """Narrow (or widen) one declared hyperparameter: numeric bounds, or categorical options."""

    low: float | None = None
    """new lower bound (numeric ranges); ``None`` keeps the declared one"""
    high: float | None = None
    """new upper bound (numeric ranges); ``None`` keeps the declared one"""
    log: bool | None = None
    """sample on a log scale (float ranges); ``None`` keeps the declared scale"""
    options: list[Any] | None = None
    """new options (categorical hyperparameters); ``None`` keeps the declared ones"""


class TuneConfig(_Strict):
    """A multi-objective study over one defense's hyperparameters against an attack suite."""

    name: Name
    """the study's name (in the Optuna storage and the MLflow parent run)"""
    plugins: Plugins = []
    """plug-in modules or ``.py`` files to import first (:mod:`arena.plugins`)"""
    victim: VictimSpec
    """the victim the defense protects"""
    defense: str = Field(min_length=1)
    """the registered defense whose hyperparameters are searched"""
    fixed: dict[str, Any] = {}
    """hyperparameters held fixed (not searched)"""
    search_space: dict[str, RangeOverride] = {}
    """overrides of the ranges the defense declares; a declared name left out keeps its range"""
    attacks: Attacks
    """the suite: protection is the worst case over these"""
    budget: PositiveInt
    """queries per attacker in every trial"""
    seed: NonNegativeInt = 0
    """the attackers' seed in every trial"""
    trials: PositiveInt = 12
    """trials to complete (a rerun resumes until this many are COMPLETE)"""
    concurrency: PositiveInt = 2
    """trials in flight at once (each plays every attack in parallel)"""
    utility_floor: float = Field(default=0.01, ge=0, le=1)
    """largest utility drop below the undefended victim a setting may cost to count"""
    utility: Literal["accuracy", "goodput"] = "accuracy"
    """the utility objective: defended test accuracy, or for a model zoo the goodput (share of
    benign requests served within their targets; the floor is then measured from 1)"""
    axis: AxisName = "prevention"
    """the axis of protection the second objective measures, each against its own strongest
    adversary of the suite (:mod:`arena.protection_axes`): ``prevention`` (1 - the strongest
    stolen accuracy), ``detection`` (share of matches in which the least-flagged thief was
    flagged), ``attribution`` (share of the least-claimed thief's models claimed), ``cost`` (the
    cheapest thief's work per query over the benign callers')"""
    max_false_positives: float | None = Field(default=None, ge=0, le=1)
    """a second constraint beside the utility floor: the largest share of benign callers a
    detector may flag for a setting to count (``None``: no bound)"""
    cost: Literal["latency", "kl"] | None = None
    """optional third objective (minimised): latency ratio or test-set KL in nats"""
    defaults: list[dict[str, Any]] = []
    """the literature's settings, evaluated under the same suite and drawn on the frontier plot"""
    storage: str | None = None
    """Optuna storage: a journal file path or an RDB URL; ``None``: a journal under ARENA_HOME"""
    sampler_seed: NonNegativeInt = 0
    """seed of Optuna's multi-objective TPE sampler"""
    substitute_arch: str | None = None
    """the thieves' architecture; ``None``: the victim's"""
    download: bool = False
    """fetch a missing torchvision dataset (on a machine with network); else it must be on disk"""
    best_response: BestResponse = BestResponse(trials=TUNING_BEST_RESPONSE_TRIALS)
    """the thieves' inner best response, on by default in studies (``trials: 0`` turns it off):
    protection is then measured against attackers that fit their recipe to the defense"""
    benign: BenignSpec | None = None
    """benign callers sharing the service with each thief when the defense detects (their false
    positives); ``None``: one caller streaming the test set at batch 256"""
    ray: RaySettings = RaySettings()
    """where trials run"""
    tracking: TrackingSettings = TrackingSettings(experiment="arena-tuning")
    """where results go"""

    def specs_for(self, params: dict[str, Any]) -> list[MatchSpec]:
        """The suite's matches against this defense with ``params`` (plus the fixed ones)."""
        chain = (PluginSpec(name=self.defense, params={**self.fixed, **params}),)
        return [
            versioned_match(
                MatchSpec(
                    victim=self.victim,
                    defenses=chain,
                    attack=attack,
                    budget=self.budget,
                    seed=self.seed,
                    substitute_arch=self.substitute_arch,
                    benign=self.benign,
                )
            )
            for attack in self.best_response.apply(self.attacks)
        ]

    def space(self) -> dict[str, ParamSpace]:
        """The searched hyperparameters: the declared space with overrides applied, minus fixed."""
        declared = dict(DEFENSES.get(self.defense).search_space)
        space: dict[str, ParamSpace] = {}
        for name, declared_range in declared.items():
            if name in self.fixed:
                continue
            override = self.search_space.get(name)
            space[name] = _apply(declared_range, override) if override else declared_range
        return space


def _apply(declared: ParamSpace, override: RangeOverride) -> ParamSpace:
    if isinstance(declared, Choice):
        return Choice(tuple(override.options)) if override.options is not None else declared
    low = declared.low if override.low is None else override.low
    high = declared.high if override.high is None else override.high
    if isinstance(declared, IntRange):
        return IntRange(int(low), int(high))
    log = declared.log if override.log is None else override.log
    return FloatRange(float(low), float(high), log)


def _range_problems(config: TuneConfig) -> list[tuple[str, str]]:
    cls = DEFENSES.get(config.defense)
    declared = cls.search_space
    problems: list[tuple[str, str]] = []
    for name, override in config.search_space.items():
        path = f"search_space.{name}"
        if name not in declared:
            known = ", ".join(declared) or "none"
            problems.append(
                (path, f"{config.defense!r} declares no tunable {brief(name)}; it has: {known}")
            )
            continue
        kind = declared[name]
        if isinstance(kind, Choice):
            if override.low is not None or override.high is not None or override.log is not None:
                problems.append((path, f"{name!r} is categorical: give `options`, not bounds"))
            elif override.options is not None and not override.options:
                problems.append((path, "options must not be empty"))
            continue
        if override.options is not None:
            problems.append((path, f"{name!r} is numeric: give `low`/`high`, not `options`"))
            continue
        bounded = _apply(kind, override)
        assert not isinstance(bounded, Choice)
        if not (math.isfinite(bounded.low) and math.isfinite(bounded.high)):
            problems.append((path, "bounds must be finite"))
        elif bounded.low >= bounded.high:
            problems.append((path, f"low ({bounded.low}) must be below high ({bounded.high})"))
        elif isinstance(bounded, FloatRange) and bounded.log and bounded.low <= 0:
            problems.append((path, f"a log range needs low > 0, got {bounded.low}"))
    if problems:
        return problems
    space = config.space()
    if not space:
        problems.append(
            (
                "defense",
                f"{config.defense!r} has nothing left to tune (no declared search space, "
                "or every tunable parameter is fixed)",
            )
        )
    # every corner of the space must build a valid defense for the victim's task
    for name, kind in space.items():
        values = kind.options if isinstance(kind, Choice) else (kind.low, kind.high)
        for value in values:
            path = f"search_space.{name}"
            corner = PluginSpec(name=config.defense, params={**config.fixed, name: value})
            problems += [
                (path, f"value {brief(value)} is invalid: {message}")
                for _, message in defense_problems(PluginAt(corner, path, path), [config.victim])
            ]
    return problems


def _storage_problems(storage: str | None) -> list[tuple[str, str]]:
    """A storage URL Optuna cannot use, or a journal path below something not a directory."""
    if not storage:
        return []
    where = named_storage(storage)
    if isinstance(where, str):
        scheme = where.partition("://")[0]
        base = scheme.split("+")[0]
        if base not in STORAGE_SCHEMES:
            return [
                (
                    "storage",
                    f"unsupported storage URL scheme {brief(scheme)}: use a journal file path or "
                    f"an RDB URL ({', '.join(s + '://' for s in STORAGE_SCHEMES)})",
                )
            ]
        if base == "sqlite" and not where.startswith("sqlite:///"):
            return [("storage", "a SQLite URL needs three slashes: sqlite:///path/to/file.db")]
        return []
    if where.parent.exists() and not where.parent.is_dir():
        return [("storage", f"journal path {storage!r}: {where.parent} is not a directory")]
    return []


def _defense(config: TuneConfig) -> PluginAt:
    """The studied defense with its fixed hyperparameters, as every trial and default plays it."""
    return PluginAt(PluginSpec(name=config.defense, params=config.fixed), "defense", "fixed")


def _lineup(config: TuneConfig) -> Lineup:
    """The study as a tournament would see it: one victim, the defense, the attack suite."""
    return Lineup(
        victims=[("victim", config.victim)],
        chains=[("defense", [_defense(config)])],
        attacks=[
            PluginAt.entry(spec, f"attacks.{i}")
            for i, spec in enumerate(config.best_response.apply(config.attacks))
        ],
        substitute_arch=config.substitute_arch,
        defenses_path="defense",
    )


def _semantic_problems(config: TuneConfig) -> list[tuple[str, str]]:
    """The lineup's problems (as a tournament's), then the study's own: its search space, its
    literature defaults (played with the fixed hyperparameters), storage and utility."""
    problems = lineup_problems(_lineup(config))
    if not plugin_problems(DEFENSES, _defense(config)):
        problems += _range_problems(config)
        for i, params in enumerate(config.defaults):
            played = PluginSpec(name=config.defense, params={**config.fixed, **params})
            path = f"defaults.{i}"
            problems += defense_problems(PluginAt(played, path, path), [config.victim])
    problems += _storage_problems(config.storage)
    if config.utility == "goodput" and not config.victim.is_zoo:
        problems.append(("utility", "goodput is measured on model zoos only: use a zoo victim"))
    return problems


def parse_tune_config(raw: Any, source: str = "<config>") -> TuneConfig:
    """Validate a parsed YAML document; raises ConfigError listing every problem."""
    return parse_document(TuneConfig, raw, source, _semantic_problems)


def load_tune_config(path: Path) -> TuneConfig:
    """Read and validate a tuning-study YAML file."""
    return parse_tune_config(read_yaml(path), str(path))
