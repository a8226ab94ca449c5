"""Tournament configs: YAML validated into typed models before anything starts.

Every problem is reported at once, each by its dotted path (``defenses.2.params.beta: ...``), and
nothing (Ray, MLflow, caches) is touched until the config is valid. A hostile config gets as few
lines as a careless one: the file is read within bounds (:mod:`orchestration.yaml_input`) and
every problem :class:`ConfigError` lists is one short line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

import agents  # noqa: F401  (registers the built-in attacks)
from agents._thief_recipe import MAX_TRIALS
from arena.attacker import ATTACKS
from arena.checkpoints import load_checkpoint
from arena.data import DATASETS, INPUT_SHAPES, NUM_CLASSES, is_dataset
from arena.defenses import DEFENSES, Defense
from arena.errors import ArenaError, PluginImportError, brief, first_unprintable, one_line
from arena.matchups import plays_pool, plays_victim
from arena.models import resolve_architecture
from arena.plugins import import_plugin, load_installed_plugins, resolved_ref
from arena.pools import pool_problem
from arena.registry import Registry, build_plugin, canonical_params
from arena.removal import REMOVALS
from arena.seeds import BEST_RESPONSE_FIELD
from arena.specs import BenignSpec, MatchSpec, PluginSpec, PoolChoice, VictimSpec
from arena.versions import canonical_plugin, versioned_match
from orchestration.suites import expand_suites
from orchestration.yaml_input import PATH_LIMIT, UnreadableYaml, read_yaml_file

ModelT = TypeVar("ModelT", bound=BaseModel)


MAX_PROBLEMS = 20
"""problems a ConfigError lists (the rest are counted): a config of a thousand bad budgets
gets a screenful, not a thousand lines"""
MESSAGE_LIMIT = 400
"""characters of one problem's message (values in it are quoted by ``arena.errors.brief``;
this bounds what plug-ins write)"""
WHERE_LIMIT = 120
"""characters of one problem's dotted path (a mapping key in it may be the hostile value)"""


class ConfigError(ArenaError):
    """A config that cannot run; ``problems`` lists ``(dotted path, message)`` pairs, each one
    bounded printable line, at most :data:`MAX_PROBLEMS` of them (then a count of the rest)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = one_line(source, PATH_LIMIT)
        self.problems = [
            (one_line(where, WHERE_LIMIT), one_line(message, MESSAGE_LIMIT))
            for where, message in problems[:MAX_PROBLEMS]
        ]
        if len(problems) > MAX_PROBLEMS:
            self.problems.append(("…", f"{len(problems) - MAX_PROBLEMS} more problem(s)"))
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in self.problems)
        super().__init__(f"{self.source}: {len(problems)} problem(s)\n{lines}")


NAME_BYTES = 200
"""longest name or label, in UTF-8 bytes (a study's name plus ``.journal`` is a file name)"""


def _label(value: str) -> str:
    """Names and labels reach MLflow tags, terminals and HTML: printable, bounded."""
    if (at := first_unprintable(value)) is not None:
        raise ValueError(
            f"must not contain control characters; found {brief(value[at])} at position {at}"
        )
    if (size := len(value.encode())) > NAME_BYTES:
        raise ValueError(f"is {size:,} bytes long in UTF-8; at most {NAME_BYTES}")
    return value


def _file_name(value: str) -> str:
    """A tournament's or study's name also names files under ARENA_HOME (a study's journal,
    its frontier plots): a label that is a single path component."""
    _label(value)
    if "/" in value or "\\" in value:
        raise ValueError("must not contain '/' or '\\' (the name is used as a file name)")
    if not value.strip("."):
        raise ValueError(f"{value!r} cannot name a file")
    return value


Label = Annotated[str, Field(min_length=1), AfterValidator(_label)]
"""a printable single-line text of at most :data:`NAME_BYTES` bytes"""
Name = Annotated[str, Field(min_length=1), AfterValidator(_file_name)]
"""a :data:`Label` usable as a file name"""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def plugin_entry(value: Any) -> Any:
    """Allow ``- none`` as shorthand for ``- {name: none}``."""
    return {"name": value} if isinstance(value, str) else value


def attack_entries(value: Any) -> Any:
    """An ``attacks`` list with suites expanded and ``- knockoff`` shorthands spelled out."""
    value = expand_suites(value)
    return [plugin_entry(v) for v in value] if isinstance(value, list) else value


Attacks = Annotated[list[PluginSpec], Field(min_length=1), BeforeValidator(attack_entries)]
"""an ``attacks`` list as tournaments and tuning studies both write it: an unknown suite is a
problem at ``attacks`` reported with the config's other schema problems"""


class BestResponse(_Strict):
    """The thieves' inner best response (:mod:`agents._best_response`): each transfer-set
    attack searches its training recipe and target form on a held-out part of its own answers.
    Applied to every attack whose class has the ``best_response_trials`` field (the others
    play unchanged); an attack that sets the field itself keeps its own value."""

    trials: Annotated[int, Field(strict=True, ge=0, le=MAX_TRIALS)] = 0
    """candidates scored per match, the attack's own recipe among them (0: off)"""

    def apply(self, attacks: Sequence[PluginSpec]) -> list[PluginSpec]:
        """``attacks`` as played: the trial count added to those that take it."""
        return [self._applied(attack) for attack in attacks]

    def _applied(self, attack: PluginSpec) -> PluginSpec:
        if not self.trials or BEST_RESPONSE_FIELD in attack.params or attack.name not in ATTACKS:
            return attack
        fields = {f.name for f in dataclasses.fields(ATTACKS.get(attack.name)) if f.init}
        if BEST_RESPONSE_FIELD not in fields:
            return attack
        params = {**attack.params, BEST_RESPONSE_FIELD: self.trials}
        return attack.model_copy(update={"params": params})


class RaySettings(_Strict):
    """Where matches run."""

    address: str | None = None
    """existing cluster (``ray://…`` or ``auto``); ``None`` starts a local Ray"""
    cpus_per_match: PositiveInt = 1
    """CPUs (and torch threads) per match task"""
    cpus_per_victim: NonNegativeFloat = 0
    """CPUs reserved by each victim-service actor (0: it shares the match CPUs)"""
    matches_in_flight: PositiveInt | None = None
    """match tasks running at once; ``None``: the cluster's CPUs over ``cpus_per_match``. Ray
    frees a task's CPU while it waits on its victim, so uncapped, more matches train at once
    than there are cores, each slower, none sooner"""
    gpus_per_match: float = Field(default=0, ge=0, le=1)
    """GPUs per match task, for its thief (substitute training and scoring); fractions let
    several matches share a card (0.25: four per GPU). A match uses one device, so at most 1.
    0: the thief runs on the CPU, exactly as without GPUs (docs/architecture.md, Devices)"""
    gpus_per_victim: NonNegativeFloat = 0
    """GPUs per victim-service actor and per victim-training task; the victim is served (and
    trained) on CUDA when given one"""
    mixed_precision: bool = False
    """thieves train their substitutes under autocast (bfloat16 on the CPU, float16 with a
    gradient scaler on CUDA). An execution setting like the device: not part of match keys, and
    victims are always trained in full precision (their cache key does not record it)"""
    object_store_mb: PositiveInt | None = None
    """object store size for a local Ray (``None``: Ray's default)"""
    victim_max_restarts: NonNegativeInt = 3
    """restarts of a crashed or hung victim-service actor (its ledger file is reopened)"""
    victim_queue_cap: PositiveInt = 1024
    """calls queued at one victim before further ones get a typed ``Overloaded`` error"""
    victim_timeout_s: PositiveFloat = 300.0
    """a victim call taking longer gets a typed timeout and the actor is restarted"""


class TrackingSettings(_Strict):
    """Where results go."""

    experiment: Label = "model-stealing-arena"
    """the MLflow experiment the runs are logged under"""
    log_models: bool = False
    """log models to MLflow too: each victim as trained (before training-time defenses, if any,
    change what is served) on the tournament's parent run as ``victim-<victim key>``, each
    match's scored substitute (after any removal) on its child run as ``substitute``, each with a
    signature from a few test images; load one with
    ``mlflow.pytorch.load_model("runs:/<run id>/<name>")``. Off: no model is kept or logged.
    Tournaments only (a tuning study ignores it)"""


Plugins = list[Annotated[str, Field(min_length=1, max_length=PATH_LIMIT)]]
"""a config's ``plugins:``: importable module names or ``.py`` file paths"""


class TournamentConfig(_Strict):
    """Victims × defense chains × attacks × budgets × seeds, all played as matches."""

    name: Name
    """the tournament (one MLflow parent run per name); reruns of a name play only what is
    missing"""
    plugins: Plugins = []
    """plug-in modules or ``.py`` files to import first (:mod:`arena.plugins`)"""
    victims: list[VictimSpec] = Field(min_length=1)
    """each victim: dataset, architecture, training recipe, seed (or a checkpoint)"""
    defenses: list[list[PluginSpec]] = Field(min_length=1)
    """each entry is one defense chain; a single defense may be written without the list"""
    attacks: Attacks
    """attacks by name (``- copycat``), with ``params``, or ``{suite: NAME}`` for a named suite"""
    budgets: list[PositiveInt] = Field(min_length=1)
    """queries per attacker, enforced by the victim service"""
    seeds: list[NonNegativeInt] = Field(default=[0], min_length=1)
    """attacker seeds: every match is played once per seed"""
    pools: list[PoolChoice] = Field(default=["in_distribution"], min_length=1)
    """query pools the thieves are granted (:mod:`arena.pools`); data-free attacks play once;
    ``dataset:NAME`` or ``{dataset: NAME, resize: MODE, channels: MAP}`` for another dataset's
    (:mod:`arena.pool_source`)"""
    download: bool = False
    """fetch missing torchvision datasets (on a machine with network); else they must be on disk"""
    queries_to_x: float = Field(default=0.9, gt=0, le=1)
    """budget curves: queries-to-X is the smallest budget whose stolen accuracy reaches X times
    the victim's accuracy"""
    substitute_arch: str | None = None
    """the thieves' architecture; ``None``: the victim's"""
    removals: list[PluginSpec] = Field(default=[PluginSpec(name="none")], min_length=1)
    """watermark-removal attacks (:mod:`arena.removal`) each thief's model is put through before
    it is scored, one match per entry; ``none`` keeps the model as stolen"""
    best_response: BestResponse = BestResponse()
    """the thieves' inner best response; off unless ``trials`` is set"""
    benign: BenignSpec | None = None
    """benign callers sharing the service with each thief when the chain has a detector (their
    false positives); ``None``: one caller streaming the test set at batch 256"""
    ray: RaySettings = RaySettings()
    """where matches run"""
    tracking: TrackingSettings = TrackingSettings()
    """where results go"""

    @field_validator("removals", mode="before")
    @classmethod
    def _removals(cls, value: Any) -> Any:
        return [plugin_entry(v) for v in value] if isinstance(value, list) else value

    @field_validator("defenses", mode="before")
    @classmethod
    def _chains(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [
            [plugin_entry(v) for v in entry] if isinstance(entry, list) else [plugin_entry(entry)]
            for entry in value
        ]

    def matches(self) -> list[MatchSpec]:
        """Every match of the tournament, plug-in parameters canonicalised, duplicates dropped."""
        chains = [
            tuple(canonical_plugin(DEFENSES, p.name, p.params) for p in chain)
            for chain in self.defenses
        ]
        played = self.best_response.apply(self.attacks)
        attacks = [canonical_plugin(ATTACKS, a.name, a.params) for a in played]
        pools = [*self.pools, "none"]
        removals = [
            None if r.name == "none" else canonical_plugin(REMOVALS, r.name, r.params)
            for r in self.removals
        ]
        specs = {
            (
                s := versioned_match(
                    MatchSpec(
                        victim=victim,
                        defenses=chain,
                        attack=attack,
                        budget=budget,
                        seed=seed,
                        pool=pool,
                        substitute_arch=self.substitute_arch,
                        removal=removal,
                        benign=self.benign,
                    )
                )
            ).key(): s
            for victim in self.victims
            for chain in chains
            for attack in attacks
            if plays_victim(ATTACKS.get(attack.name), chain, victim)
            for pool in dict.fromkeys(pools)
            if plays_pool(ATTACKS.get(attack.name), pool)
            for budget in self.budgets
            for seed in self.seeds
            for removal in removals
        }
        return list(specs.values())


@dataclass(frozen=True)
class PluginAt:
    """A plug-in as a config writes it: the spec and the dotted paths its name and its parameters
    are reported at (``attacks.1.name`` and ``attacks.1.params`` in a list; a tuning study's
    defense is ``defense`` and ``fixed``)."""

    spec: PluginSpec
    name_path: str
    params_path: str

    @classmethod
    def entry(cls, spec: PluginSpec, path: str) -> PluginAt:
        """The entry at ``path`` of a plug-in list."""
        return cls(spec, f"{path}.name", f"{path}.params")


@dataclass(frozen=True)
class Lineup:
    """What a config plays, whatever its shape: victims behind defense chains, against attacks
    (whose models removals may then rework), the thieves training ``substitute_arch``; every
    part with the dotted path the config writes it at. Tournaments and tuning studies check
    theirs with :func:`lineup_problems`, so a mistake one catches the other catches too, each
    reporting it by its own paths."""

    victims: Sequence[tuple[str, VictimSpec]]
    chains: Sequence[tuple[str, Sequence[PluginAt]]]
    attacks: Sequence[PluginAt]
    substitute_arch: str | None
    removals: Sequence[PluginAt] = ()
    defenses_path: str = "defenses"
    """where a problem of the defenses as a whole (a zoo-only defense without a zoo) is reported"""


def plugin_problems(registry: Registry[Any], at: PluginAt) -> list[tuple[str, str]]:
    """An unknown name (at the name's path) or hyperparameters that do not build the plug-in."""
    try:
        canonical_params(registry, at.spec.name, at.spec.params)
    except ArenaError as exc:
        where = at.name_path if at.spec.name not in registry else at.params_path
        return [(where, str(exc))]
    return []


def defense_problems(at: PluginAt, victims: Sequence[VictimSpec]) -> list[tuple[str, str]]:
    """A defense that does not build, or whose hyperparameters don't fit a victim's task (top-k
    with k above C)."""
    if found := plugin_problems(DEFENSES, at):
        return found
    spec = at.spec
    defense = build_plugin(DEFENSES, spec.name, spec.params)
    problems = []
    for victim in victims:
        if (classes := NUM_CLASSES.get(victim.dataset)) is None:
            continue
        try:
            defense.check_task(classes)
        except ValueError as exc:
            problems.append((at.params_path, f"defense {spec.name!r} on {victim.dataset}: {exc}"))
    return problems


def lineup_problems(lineup: Lineup) -> list[tuple[str, str]]:
    """Checks pydantic cannot do alone: registered names, plug-in hyperparameters (against the
    victims' tasks for defenses), the substitute architecture, and plays that need a zoo."""
    problems: list[tuple[str, str]] = []
    for path, victim in lineup.victims:
        problems += victim_problems(victim, path)
    victims = [victim for _, victim in lineup.victims]
    if lineup.substitute_arch is not None:
        problems += arch_problems(lineup.substitute_arch, "substitute_arch")
    for path, chain in lineup.chains:
        if not chain:
            problems.append((path, "a defense chain needs at least one defense (use `none`)"))
        for at in chain:
            problems += defense_problems(at, victims)
    for at in lineup.attacks:
        problems += plugin_problems(ATTACKS, at)
    for at in lineup.removals:
        problems += plugin_problems(REMOVALS, at)
    problems += _substitute_problems(lineup)
    problems += zoo_problems(
        victims,
        [at.spec for _, chain in lineup.chains for at in chain],
        [at.spec for at in lineup.attacks],
        lineup.defenses_path,
    )
    return problems


def victim_problems(victim: VictimSpec, path: str) -> list[tuple[str, str]]:
    """Unknown dataset or architecture names, a checkpoint that does not fit, and a non-finite
    learning rate."""
    problems = []
    if victim.dataset not in DATASETS and not is_dataset(victim.dataset):
        known = ", ".join(DATASETS.names())
        problems.append(
            (f"{path}.dataset", f"unknown {DATASETS.kind} {brief(victim.dataset)}; known: {known}")
        )
    problems += arch_problems(victim.arch, f"{path}.arch")
    if not problems:
        problems += checkpoint_problems(victim, f"{path}.checkpoint")
    if not math.isfinite(victim.lr):
        problems.append((f"{path}.lr", f"must be finite, got {victim.lr}"))
    for i, member in enumerate(victim.members or ()):
        problems += victim_problems(member, f"{path}.members.{i}")
    return problems


def arch_problems(arch: str, path: str) -> list[tuple[str, str]]:
    """An architecture that names nothing buildable, in any of its forms (a registered name,
    torchvision/<name>, package.module:factory; :func:`arena.models.resolve_architecture`)."""
    try:
        resolve_architecture(arch)
    except ArenaError as exc:
        return [(path, str(exc))]
    return []


def checkpoint_problems(victim: VictimSpec, path: str) -> list[tuple[str, str]]:
    """A victim's checkpoint that cannot be served: read, loaded into its architecture and run
    on a batch of the dataset's image shape now, before Ray or any training starts (a dataset
    whose shape is not known without loading it is checked when loaded, still before Ray)."""
    shape = INPUT_SHAPES.get(victim.dataset)
    classes = NUM_CLASSES.get(victim.dataset)
    if victim.checkpoint is None or shape is None or classes is None:
        return []
    try:
        load_checkpoint(
            victim.checkpoint, victim.arch, shape, classes, sha256=victim.checkpoint_sha256
        )
    except ArenaError as exc:
        return [(path, str(exc))]
    return []


def zoo_problems(
    victims: list[VictimSpec],
    defenses: list[PluginSpec],
    attacks: list[PluginSpec],
    defense_path: str = "defenses",
) -> list[tuple[str, str]]:
    """Model-zoo thieves and serving-level defenses in a config without a zoo victim, and
    defenses that prepare models from the victim (a zoo is several models: they would replace
    it by one) in a config with one (``defense_path``: the config's field naming defenses)."""
    if any(v.is_zoo for v in victims):
        preparing = sorted(
            {
                d.name
                for d in defenses
                if d.name in DEFENSES and DEFENSES.get(d.name).prepare is not Defense.prepare
            }
        )
        if not preparing:
            return []
        return [
            (
                defense_path,
                f"{', '.join(preparing)} prepare models from the victim, which a model zoo "
                "does not support: use serving-level or output-side defenses on zoos",
            )
        ]
    problems = []
    for name, path in [(d.name, defense_path) for d in defenses] + [
        (a.name, "attacks") for a in attacks
    ]:
        registry: Registry[Any] = DEFENSES if path == defense_path else ATTACKS
        if name not in registry:
            continue
        plugin = registry.get(name)
        if getattr(plugin, "zoo_only", False) or getattr(plugin, "victim_kind", None) == "zoo":
            problems.append(
                (
                    path,
                    f"{name!r} acts on a model zoo's selection, and no victim is a zoo "
                    "(add a victim with arch: zoo and its members)",
                )
            )
    return problems


def _lineup(config: TournamentConfig) -> Lineup:
    """Every victim, defense chain, attack and removal of the tournament, by its list index."""
    return Lineup(
        victims=[(f"victims.{i}", victim) for i, victim in enumerate(config.victims)],
        chains=[
            (
                f"defenses.{i}",
                [PluginAt.entry(spec, f"defenses.{i}.{j}") for j, spec in enumerate(chain)],
            )
            for i, chain in enumerate(config.defenses)
        ],
        attacks=[
            PluginAt.entry(spec, f"attacks.{i}")
            for i, spec in enumerate(config.best_response.apply(config.attacks))
        ],
        substitute_arch=config.substitute_arch,
        removals=[PluginAt.entry(spec, f"removals.{i}") for i, spec in enumerate(config.removals)],
    )


def _semantic_problems(config: TournamentConfig) -> list[tuple[str, str]]:
    """The lineup's problems, then whether any match is left to play under the pools."""
    problems = lineup_problems(_lineup(config))
    problems += [
        (f"pools.{i}", found)
        for i, pool in enumerate(config.pools)
        for found in dict.fromkeys(pool_problem(pool, v.dataset) for v in config.victims)
        if found is not None
    ]
    if not problems and not config.matches():
        problems.append(("pools", f"no attack of this config can play the pools {config.pools}"))
    return problems


def _substitute_problems(lineup: Lineup) -> list[tuple[str, str]]:
    """A victim that cannot be built untrained (a decision tree) cannot be the substitute of an
    attack that trains one: such configs must name a neural ``substitute_arch``."""
    if lineup.substitute_arch is not None:
        return []
    trees = [
        v
        for _, v in lineup.victims
        if v.arch == VictimSpec.TREE_ARCH
        or any(m.arch == VictimSpec.TREE_ARCH for m in v.members or ())
    ]
    trainers = sorted(
        {
            a.spec.name
            for a in lineup.attacks
            if a.spec.name in ATTACKS and ATTACKS.get(a.spec.name).victim_kind != "decision_tree"
        }
    )
    if trees and trainers:
        return [
            (
                "substitute_arch",
                f"{', '.join(trainers)} train a substitute of the victim's architecture, and a "
                "decision_tree victim has none to copy; set substitute_arch (e.g. mlp)",
            )
        ]
    return []


def parse_document(
    model: type[ModelT],
    raw: Any,
    source: str,
    problems_of: Callable[[ModelT], list[tuple[str, str]]],
) -> ModelT:
    """Validate a parsed YAML document: the schema, then ``problems_of`` the valid model; raises
    ConfigError listing every problem (the one way tournament and tuning configs are parsed)."""
    raw = load_config_plugins(raw, source)
    config = validate_model(model, raw, source)
    problems = problems_of(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config_plugins(raw: Any, source: str) -> Any:
    """Import the installed plug-ins and the ones a config's ``plugins:`` names, before the rest
    of it is validated (so their names are known there); a plug-in that does not import is a
    ConfigError naming it and why, before anything starts. Relative file paths are taken from
    the config file's folder; the document comes back with them resolved."""
    try:
        load_installed_plugins()
    except PluginImportError as exc:
        raise ConfigError(source, [("<installed plug-ins>", str(exc))]) from None
    entries = raw.get("plugins") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return raw  # absent, or a wrong type the schema reports
    folder = Path(source).parent if Path(source).is_file() else Path.cwd()
    problems: list[tuple[str, str]] = []
    for i, ref in enumerate(entries):
        if not isinstance(ref, str) or not ref:
            continue  # the schema reports it by its path
        try:
            import_plugin(ref, folder)
        except PluginImportError as exc:
            problems.append((f"plugins.{i}", str(exc)))
    if problems:
        raise ConfigError(source, problems)
    resolved = [resolved_ref(r, folder) if isinstance(r, str) else r for r in entries]
    return {**raw, "plugins": resolved}


def parse_config(raw: Any, source: str = "<config>") -> TournamentConfig:
    """Validate an already-parsed YAML document; raises ConfigError listing every problem."""
    return parse_document(TournamentConfig, raw, source, _semantic_problems)


def load_config(path: Path) -> TournamentConfig:
    """Read and validate a tournament YAML file."""
    return parse_config(read_yaml(path), str(path))


def read_yaml(path: Path) -> Any:
    """A config file's document (read within bounds); a file that cannot be read is a
    ConfigError with one problem saying why."""
    try:
        return read_yaml_file(path)
    except UnreadableYaml as exc:
        raise ConfigError(str(path), [("", exc.reason)]) from None


def validate_model(model: type[ModelT], raw: Any, source: str) -> ModelT:
    """A top-level mapping validated into ``model``; every pydantic problem by dotted path."""
    if not isinstance(raw, dict):
        raise ConfigError(
            source, [("", f"expected a mapping at the top level, got {type(raw).__name__}")]
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [
            (".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()
        ]
        raise ConfigError(source, problems) from None
