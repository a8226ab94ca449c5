"""The ``arena`` command line: ``arena tournament CONFIG``, ``arena tune CONFIG``,
``arena frontier STUDY...``, ``arena list``, ``arena check PLUGIN`` (the conformance kit on a
plug-in), and the untrusted mode: ``arena serve CONFIG`` (a victim over HTTP) and
``arena attack --url`` (an attack on it from another process).

User mistakes (bad configs, unknown names, missing datasets) print one line each and exit
non-zero without a traceback; ``--debug`` shows the traceback. A config file is read (within
bounds) before torch and the plug-ins are imported, Ray starts only once the config has been
validated and ``--home`` proven writable.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    name="arena",
    help="Model-Stealing Arena: tournaments between defended models and model-stealing attacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
if TYPE_CHECKING:
    from ssl import SSLContext

    from arena.data import DataSplits
    from arena.home import ArenaHome
    from arena.http_oracle import HttpEndpoint
    from orchestration.config import TournamentConfig
    from orchestration.http_server import Limits
    from orchestration.tune_config import TuneConfig

T = TypeVar("T")
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address", envvar="RAY_ADDRESS", help="Ray cluster address (default: local Ray)"
    ),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: sqlite under --home)",
    ),
]
HomeOption = Annotated[
    Path, typer.Option("--home", envvar="ARENA_HOME", help="caches and local results")
]


@app.command()
def tournament(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="tournament YAML file")],
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    home: HomeOption = Path(".arena"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Play every defense × attack × budget × seed of CONFIG on Ray and log it to MLflow."""
    config = _tournament_config(config_path)
    arena_home = _writable_home(home)
    _driver(
        lambda: _run(config, address, tracking_uri, arena_home),
        "interrupted; rerun the same command to play the remaining matches",
        debug,
    )


def _driver(work: Callable[[], None], interrupted: str, debug: bool) -> None:
    """Run a driver (a tournament, a study): SIGTERM (e.g. from a scheduler) ends it like
    Ctrl-C, so its parent run is marked KILLED, its victim services are stopped and what
    finished is kept for the rerun; an arena error is one line (a traceback with ``--debug``)."""
    from arena.errors import ArenaError

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        work()
    except ArenaError as exc:
        if debug:
            raise
        raise _fail(escape(str(exc))) from None
    except KeyboardInterrupt:
        raise _fail(interrupted, 130) from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _read_config(path: Path) -> Any:
    """A config file's document, read within bounds before anything heavy is imported: a file
    that cannot be read (missing, a directory, not UTF-8, not YAML, an alias bomb) is one line
    and exit 2 in a fraction of a second."""
    from orchestration.yaml_input import UnreadableYaml, read_yaml_file

    try:
        return read_yaml_file(path)
    except UnreadableYaml as exc:
        errors.print(
            f"[bold red]invalid config[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from None


def _validated(parse: Callable[[Any, str], T], raw: Any, path: Path) -> T:
    """Validate a config's document; every problem is printed by its dotted path (one bounded
    line each, see ``ConfigError``) and the exit status is 2."""
    from orchestration.config import ConfigError

    try:
        return parse(raw, str(path))
    except ConfigError as exc:
        errors.print(
            f"[bold red]invalid config[/] {escape(exc.source)}:", highlight=False, soft_wrap=True
        )
        for where, message in exc.problems:
            errors.print(
                escape(f"  {where or '<root>'}: {message}"), highlight=False, soft_wrap=True
            )
        raise typer.Exit(2) from None


def _tournament_config(path: Path) -> TournamentConfig:
    raw = _read_config(path)
    from orchestration.config import parse_config

    return _validated(parse_config, raw, path)


def _tune_config(path: Path) -> TuneConfig:
    raw = _read_config(path)
    from orchestration.tune_config import parse_tune_config

    return _validated(parse_tune_config, raw, path)


def _writable_home(home: Path) -> ArenaHome:
    """``--home`` (ARENA_HOME) made absolute, created if missing and proven writable by a file
    created and removed in it; otherwise one line and exit 2. Checked before Ray or MLflow
    start: MLflow's SQLite store would otherwise retry for minutes and fail without naming the
    directory. The home is then passed down explicitly, never through the environment."""
    import tempfile

    from arena.errors import one_line
    from arena.home import ArenaHome

    advice = "set --home or ARENA_HOME to a writable directory"
    home = Path(os.path.abspath(home.expanduser()))
    shown = escape(one_line(str(home), 200))
    try:
        home.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _fail(f"ARENA_HOME {shown} exists and is not a directory; {advice}", 2) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise _fail(f"ARENA_HOME {shown} cannot be created ({why}); {advice}", 2) from None
    try:
        with tempfile.NamedTemporaryFile(prefix=".arena-write-check-", dir=home):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise _fail(f"ARENA_HOME {shown} is not writable ({why}); {advice}", 2) from None
    return ArenaHome.at(home)


@app.command()
def tune(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="tuning-study YAML file")],
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    home: HomeOption = Path(".arena"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Tune one defense's hyperparameters with Optuna against the worst case of an attack suite;
    the same command resumes an interrupted study."""
    config = _tune_config(config_path)
    arena_home = _writable_home(home)
    _driver(
        lambda: _tune(config, address, tracking_uri, arena_home),
        "interrupted; rerun the same command to finish the study",
        debug,
    )


def _tune(config: object, address: str | None, tracking_uri: str | None, home: ArenaHome) -> None:
    from orchestration.frontier import dominated_by_frontier, frontier_table
    from orchestration.tracking import TRIALS_VIEW, Tracker
    from orchestration.trial_scores import Scores
    from orchestration.tune_config import TuneConfig
    from orchestration.tuning import run_study

    assert isinstance(config, TuneConfig)
    console.print(
        f"[bold]{escape(config.name)}[/]: {config.defense} over {', '.join(config.space())}"
    )
    tracker = Tracker.for_home(home, tracking_uri, config.tracking.experiment)

    def on_trial(label: str, params: dict[str, object], scores: Scores | None) -> None:
        if scores is None:
            console.print(f"  [red]{label} failed[/] {params}")
            return
        shortfall = scores.shortfall(config.max_false_positives)
        flag = f" [yellow]({shortfall})[/]" if shortfall else ""
        figure = "protection" if scores.axis == "prevention" else scores.axis
        fpr = scores.false_positive_rate
        benign = "" if fpr is None else f", benign FPR {fpr:.2f}"
        console.print(
            f"  {label} {params}: utility {scores.utility:.4f}, {figure} "
            f"{scores.protection:.4f}{benign} (strongest: {scores.strongest_attack}){flag}",
            highlight=False,
        )

    outcome = run_study(config, tracker, home, address=address, on_trial=on_trial)
    view = outcome.view
    if outcome.reaped:
        console.print(f"{outcome.reaped} interrupted trial(s) were retried")
    console.print(
        f"undefended {view.utility_metric} {view.victim_accuracy:.4f}, utility floor "
        f"{view.victim_accuracy - outcome.floor:.4f}; {len(view.points)} trials, "
        f"{outcome.evaluated_now} evaluated by this run"
    )
    console.print(frontier_table(view), markup=False, highlight=False)
    for default in view.defaults:
        beaten = dominated_by_frontier(view, default)
        verdict = f"dominated by {beaten.label}" if beaten else "not dominated by the frontier"
        console.print(
            f"literature default {default.params}: {verdict}", markup=False, highlight=False
        )
    console.print(
        f"frontier plot: {outcome.artifacts['png']} and {outcome.artifacts['html']}\n"
        f"MLflow parent run {outcome.parent_run_id}: "
        f"mlflow ui --backend-store-uri {tracker.tracking_uri}, then "
        f"{tracker.runs_url(view=TRIALS_VIEW)}\n"
        f"Optuna dashboard: optuna-dashboard {_dashboard_target(config, home.root)}",
        markup=False,
    )


def _dashboard_target(config: object, home: Path) -> str:
    from orchestration.study_storage import storage_location
    from orchestration.tune_config import TuneConfig

    assert isinstance(config, TuneConfig)
    return str(storage_location(config.name, config.storage, home))


@app.command()
def frontier(
    studies: Annotated[
        list[str], typer.Argument(metavar="STUDY...", help="study names in the storage")
    ],
    storage: Annotated[
        list[str] | None,
        typer.Option(
            "--storage",
            help="journal file or RDB URL holding the studies (repeat it: one per study, or one "
            "for all); default: each study's journal under --home",
        ),
    ] = None,
    floor: Annotated[
        float, typer.Option("--floor", help="utility drop allowed below each undefended victim")
    ] = 0.01,
    out: Annotated[Path, typer.Option("--out", help="folder for the overlay plot")] = Path(
        "frontier"
    ),
    home: HomeOption = Path(".arena"),
) -> None:
    """Overlay the frontiers of several studies and name the defense that protects best at a
    utility floor."""
    import optuna

    from orchestration.frontier import best_at_floor, plot_html, plot_png, study_view
    from orchestration.study_storage import open_storage_at, storage_location

    if storage and len(storage) not in (1, len(studies)):
        raise _fail(f"give one --storage, or one per study ({len(studies)}), not {len(storage)}", 2)
    if not 0 <= floor <= 1:
        raise _fail(f"--floor must be between 0 and 1, got {floor}", 2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    views = []
    for i, name in enumerate(studies):
        target = (storage[i] if len(storage) > 1 else storage[0]) if storage else None
        where = storage_location(name, target, home)
        if isinstance(where, Path) and not where.is_file():
            raise _fail(
                escape(f"no study storage at {where}; run `arena tune` first or pass --storage"), 2
            )
        backend = open_storage_at(where)
        try:
            views.append(study_view(optuna.load_study(study_name=name, storage=backend)))
        except KeyError:
            raise _fail(escape(f"no study named {name!r} in {where}"), 2) from None
    out.mkdir(parents=True, exist_ok=True)
    png = plot_png(views, out / "frontiers.png", floor)
    html = plot_html(views, out / "frontiers.html", floor)
    for view in views:
        best = max((p.protection for p in view.frontier), default=float("nan"))
        console.print(
            f"{view.name}: {len(view.points)} trials, {len(view.frontier)} on the frontier, "
            f"best feasible protection {best:.4f}",
            markup=False,
            highlight=False,
        )
    winner = best_at_floor(views, floor)
    if winner is None:
        console.print(f"no study has a setting within {floor} of its undefended victim")
    else:
        name, point = winner
        console.print(
            f"best protection within {floor} utility of the undefended victim: {name} "
            f"{point.params} (utility {point.utility:.4f}, protection {point.protection:.4f})",
            markup=False,
            highlight=False,
        )
    console.print(f"overlay: {png} and {html}", markup=False)


def _run(config: object, address: str | None, tracking_uri: str | None, home: ArenaHome) -> None:
    from arena.record import MatchResult
    from arena.specs import MatchSpec
    from orchestration.config import TournamentConfig
    from orchestration.leaderboard import (
        attack_label,
        axes_rich_table,
        has_more_axes,
        rich_table,
    )
    from orchestration.runtime import MatchFailure
    from orchestration.tournament import run_tournament
    from orchestration.tracking import Tracker

    assert isinstance(config, TournamentConfig)
    tracker = Tracker.for_home(home, tracking_uri, config.tracking.experiment)
    uri = tracker.tracking_uri
    console.print(f"[bold]{escape(config.name)}[/]: tracking at {escape(uri)}")

    progress = Progress(
        TextColumn("[bold]matches"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("matches", total=None)

    def on_start(pending: int, skipped: int) -> None:
        console.print(f"{pending} match(es) to play, {skipped} already finished in MLflow")
        progress.update(task, total=pending)
        if pending:
            progress.start()

    def on_result(spec: MatchSpec, outcome: MatchResult | MatchFailure) -> None:
        if isinstance(outcome, MatchResult):
            progress.console.print(
                f"  {escape(outcome.defense)} × {escape(attack_label(outcome))} "
                f"@ {outcome.budget} (seed {outcome.seed}): "
                f"stolen {outcome.stolen_accuracy:.4f}, fidelity {outcome.fidelity:.4f}, "
                f"utility {outcome.utility:.4f} [{outcome.match_seconds:.0f}s]",
                highlight=False,
            )
        else:
            progress.console.print(
                f"  [red]FAILED[/] {spec.key()}: {outcome.reason.splitlines()[0]}"
            )
        progress.advance(task)

    try:
        outcome = run_tournament(
            config,
            tracker,
            home,
            address=address,
            on_result=on_result,
            on_start=on_start,
        )
    finally:
        progress.stop()

    for info in outcome.victims.values():
        how = "cache" if info.from_cache else f"trained in {info.train_seconds:.0f}s"
        name = f"{info.spec.dataset}/{info.spec.arch}"
        console.print(f"victim {name}: test accuracy {info.test_accuracy:.4f} ({how})")
    console.print(rich_table(outcome.leaderboard, f"Leaderboard — {escape(config.name)}"))
    if has_more_axes(outcome.leaderboard):
        title = f"Four axes of protection — {escape(config.name)}"
        console.print(axes_rich_table(outcome.leaderboard, title))
    if outcome.curves:
        from orchestration.budget_curves import curves_markdown

        console.print(f"Budget curves (queries to {config.queries_to_x:g}× victim accuracy):")
        table = curves_markdown(outcome.curves, config.queries_to_x)
        console.print(table, highlight=False, markup=False)
    console.print(
        f"played {outcome.played}, skipped {outcome.skipped} (already finished), "
        f"failed {len(outcome.failures)}; wall time {outcome.wall_seconds:.0f}s"
    )
    console.print(
        f"MLflow parent run {outcome.parent_run_id}; open the UI with:\n"
        f"  mlflow ui --backend-store-uri {uri}\n"
        f"and the runs table at {tracker.runs_url()}",
        markup=False,
    )
    if outcome.failures:
        raise _fail(f"{len(outcome.failures)} match(es) failed; rerun to retry them")


# ---- untrusted mode: serve a victim over HTTP, attack it from another process ----------------


@app.command()
def serve(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="tournament YAML file")],
    tokens: Annotated[
        Path, typer.Option("--tokens", help="YAML: attackers: [{id, budget, tokens: [...]}]")
    ],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port (0: any free port)")] = 8765,
    victim: Annotated[int, typer.Option("--victim", help="index into the config's victims")] = 0,
    defense: Annotated[
        int | None,
        typer.Option(
            "--defense",
            help="index into the config's defense chains (default: the first chain that defends)",
        ),
    ] = None,
    certfile: Annotated[
        Path | None, typer.Option("--certfile", help="serve HTTPS with this PEM certificate")
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option("--keyfile", help="the certificate's PEM private key")
    ] = None,
    token_rate: Annotated[
        float | None,
        typer.Option("--token-rate", min=0.001, help="requests a second each token may send"),
    ] = None,
    request_timeout: Annotated[
        float,
        typer.Option("--request-timeout", min=0.1, help="seconds a whole request may take"),
    ] = 10.0,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, help="open connections, all clients")
    ] = 256,
    max_per_client: Annotated[
        int,
        typer.Option(
            "--max-per-client",
            min=1,
            help="open connections from one address (raise it behind a proxy: all its clients "
            "share its address)",
        ),
    ] = 32,
    home: HomeOption = Path(".arena"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Serve one defended victim of CONFIG over HTTP to untrusted attackers, a bearer token per
    attacker (several tokens of one attacker share its budget). Budgets, replayable query ids
    and the audit log live in a ledger file under --home, so a restarted server carries on where
    it stopped. Runs until Ctrl-C."""
    config = _tournament_config(config_path)
    from arena.errors import ArenaError
    from orchestration.endpoint import load_tokens

    try:
        table = load_tokens(tokens)
    except ArenaError as exc:
        raise _fail(str(exc), 2) from None
    if not 0 <= victim < len(config.victims):
        raise _fail(f"--victim must be 0..{len(config.victims) - 1}, got {victim}", 2)
    chains = config.defenses
    if defense is None:
        defense = next((i for i, c in enumerate(chains) if any(d.name != "none" for d in c)), 0)
    if not 0 <= defense < len(chains):
        raise _fail(f"--defense must be 0..{len(chains) - 1}, got {defense}", 2)
    if (certfile is None) != (keyfile is None):
        raise _fail("--certfile and --keyfile go together", 2)
    tls = None
    if certfile is not None and keyfile is not None:
        import ssl

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise _fail(f"cannot use --certfile/--keyfile: {exc.strerror or exc}", 2) from None
    from orchestration.http_server import Limits

    limits = Limits(
        request_timeout_s=request_timeout,
        max_connections=max_connections,
        max_connections_per_client=max_per_client,
    )
    arena_home = _writable_home(home)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        options = ServeOptions(arena_home, limits, token_rate, tls)
        _serve(config, victim, defense, table, host, port, options)
    except ArenaError as exc:
        if debug:
            raise
        raise _fail(str(exc)) from None
    except OSError as exc:
        if debug:
            raise
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2) from None
    except KeyboardInterrupt:
        console.print("stopped")


@dataclass(frozen=True)
class ServeOptions:
    """How ``arena serve`` runs besides what it serves."""

    home: ArenaHome
    limits: Limits
    token_rate: float | None = None
    tls: SSLContext | None = None


def _serve(
    config: object, victim: int, defense: int, table: object, host: str, port: int,
    options: ServeOptions,
) -> None:  # fmt: skip
    from orchestration.config import TournamentConfig
    from orchestration.endpoint import TokenTable, serve_config_victim

    assert isinstance(config, TournamentConfig) and isinstance(table, TokenTable)
    served = serve_config_victim(
        config,
        victim,
        defense,
        table,
        options.home,
        host,
        port,
        limits=options.limits,
        token_rate=options.token_rate,
        tls=options.tls,
    )
    logging.getLogger("orchestration.http_server").addHandler(logging.StreamHandler())
    target = config.victims[victim]
    console.print(
        f"serving {target.dataset}/{target.arch} behind {served.label} at {served.endpoint.url} "
        f"to {len(table.budgets)} attacker(s), {len(table.owners)} token(s) (untrusted-http); "
        f"ledger {served.ledger.path}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    sys.stdout.flush()
    try:
        served.endpoint.serve_forever()
    finally:
        served.endpoint.close()
        served.ledger.close()


@app.command()
def attack(
    url: Annotated[str, typer.Option("--url", help="the endpoint, e.g. http://127.0.0.1:8765")],
    token: Annotated[str, typer.Option("--token", envvar="ARENA_TOKEN", help="bearer token")],
    attack_name: Annotated[str, typer.Option("--attack", help="a registered attack")],
    dataset: Annotated[
        str, typer.Option("--dataset", help="the attacker's public data")
    ] = "fashion_mnist",
    options: Annotated[
        str, typer.Option("--options", help="the attack's hyperparameters as JSON")
    ] = "{}",
    pool: Annotated[
        str, typer.Option("--pool", help="query pool granted (or dataset:NAME, another dataset's)")
    ] = "in_distribution",
    substitute_arch: Annotated[
        str, typer.Option("--substitute-arch", help="the thief's architecture")
    ] = "mlp",
    seed: Annotated[int, typer.Option("--seed", help="the attacker's randomness")] = 0,
    plugins: Annotated[
        list[str] | None,
        typer.Option("--plugin", help="a plug-in module or .py file to import (repeatable)"),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="trust this certificate for an https:// --url"),
    ] = None,
    home: HomeOption = Path(".arena"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Run a registered attack against a victim served by `arena serve` (another process) and
    print the substitute's test accuracy. Results are labelled untrusted-http."""
    import json

    from rich.markup import escape

    from arena.data import load_dataset
    from arena.errors import ArenaError, VictimUnavailable
    from arena.http_oracle import EndpointError, HttpEndpoint
    from arena.plugins import import_plugin, load_installed_plugins
    from arena.pool_source import pool_dataset

    try:
        params = json.loads(options)
    except ValueError:
        raise _fail(escape(f"--options is not JSON: {options!r}"), 2) from None
    if not isinstance(params, dict):
        raise _fail("--options must be a JSON object of hyperparameters", 2)
    arena_home = _writable_home(home)
    try:  # everything before the first query: a mistake here is bad input, exit 2
        load_installed_plugins()
        for ref in plugins or []:
            import_plugin(ref)
        endpoint = HttpEndpoint(url, token, ca_file=None if ca_file is None else str(ca_file))
        data = load_dataset(dataset, arena_home.data_dir)
        pool = _pool_option(pool)
        other = pool_dataset(pool)
        source = None if other is None else load_dataset(other, arena_home.data_dir)
        steal = _attack(endpoint, attack_name, data, params, pool, substitute_arch, seed, source)
    except ArenaError as exc:
        if debug:
            raise
        raise _fail(escape(str(exc)), 2) from None
    try:
        steal()
    except ArenaError as exc:
        if debug:
            raise
        lost = isinstance(exc, EndpointError | VictimUnavailable)
        raise _fail(escape(str(exc)), 2 if lost else 1) from None


def _attack(
    endpoint: HttpEndpoint,
    name: str,
    data: DataSplits,
    params: dict[str, object],
    pool: str,
    substitute_arch: str,
    seed: int,
    source: DataSplits | None = None,
) -> Callable[[], None]:
    """Check the attack, the endpoint and the data; return the theft itself."""
    import time

    import numpy as np

    import agents  # noqa: F401  (registers the attacks)
    from arena.attacker import ATTACKS
    from arena.errors import ArenaError
    from arena.http_oracle import EndpointError
    from arena.match_data import MatchData
    from arena.models import resolve_architecture
    from arena.oracle import Oracle
    from arena.registry import build_plugin, plugin_label
    from arena.training import accuracy, predict_probs

    attacker = build_plugin(ATTACKS, name, params)
    resolve_architecture(substitute_arch)
    input_spec, output_spec = endpoint.public_spec()
    if data.input_shape != input_spec.shape or data.num_classes != output_spec.num_classes:
        raise EndpointError(
            0,
            "wrong_dataset",
            f"{data.name} has inputs {list(data.input_shape)} and {data.num_classes} classes; the "
            f"served victim takes {list(input_spec.shape)} and {output_spec.num_classes}",
        )
    granted = MatchData.from_splits(data, pool, source)
    knowledge = granted.knowledge(substitute_arch, type(attacker).upper_bound)
    oracle = Oracle(endpoint, "http")

    def steal() -> None:
        if oracle.remaining == 0:
            raise ArenaError(f"this token's budget is spent ({oracle.used}/{oracle.budget} used)")
        started = time.perf_counter()
        substitute = attacker.steal(oracle, knowledge, np.random.default_rng(seed))
        seconds = time.perf_counter() - started
        stolen = accuracy(predict_probs(substitute, granted.test_x), granted.test_y)
        console.print(
            f"untrusted-http: {plugin_label(name, attacker)} on {data.name}: stolen accuracy "
            f"{stolen:.4f} with {oracle.used}/{oracle.budget} queries in {seconds:.1f}s "
            "(fidelity needs the victim: not measured)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )

    return steal


def _pool_option(pool: str) -> str:
    """``--pool`` as canonical pool text (``dataset:mnist?resize=bilinear&channels=repeat``
    names another dataset's pool); InvalidParameters saying what is accepted."""
    from arena.errors import InvalidParameters
    from arena.pool_source import pool_text

    try:
        return str(pool_text(pool))
    except ValueError as exc:
        raise InvalidParameters(f"--pool: {exc}") from None


@app.command("list")
def list_plugins(
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown",
            help="markdown tables with parameters, defaults and search spaces (as in docs/)",
        ),
    ] = False,
    builtin_only: Annotated[
        bool,
        typer.Option(
            "--builtin-only", help="only the plug-ins that ship with the arena, none installed"
        ),
    ] = False,
) -> None:
    """List the registered defenses, attacks, architectures, datasets and removals (with the
    installed plug-ins), each with its version."""
    import agents  # noqa: F401  (registers the attacks)
    from arena.attacker import ATTACKS
    from arena.data import DATASET_FORMS, DATASETS
    from arena.defenses import DEFENSES
    from arena.errors import ArenaError
    from arena.models import ARCHITECTURES
    from arena.plugins import load_installed_plugins
    from arena.removal import REMOVALS
    from orchestration.docs_reference import is_builtin, plugin_tables

    if not builtin_only:
        try:
            load_installed_plugins()
        except ArenaError as exc:
            raise _fail(escape(str(exc)), 2) from None
    if markdown:  # plain text: rich would wrap the rows and read the brackets as markup
        sys.stdout.write(plugin_tables(builtin_only))
        return
    for registry in (DEFENSES, ATTACKS, ARCHITECTURES, DATASETS, DATASET_FORMS, REMOVALS):
        table = Table(title=f"{registry.kind}s", title_justify="left", show_header=False, box=None)
        table.add_column("name", style="bold cyan")
        table.add_column("version", style="dim")
        table.add_column("description")
        for name, description in registry.describe().items():
            if not builtin_only or is_builtin(registry.get(name)):
                table.add_row(name, f"v{registry.version(name)}", description)
        console.print(table)
        console.print()


@app.command()
def check(
    ref: Annotated[
        str,
        typer.Argument(metavar="MODULE_OR_FILE", help="a plug-in: a module name or a .py file"),
    ],
    home: HomeOption = Path(".arena"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Import a plug-in and run the conformance kit (arena.testing) on every defense, attack,
    architecture, dataset, removal and suite it registers; exit 0 when every property holds, 1
    when one fails, 2 when the plug-in does not import or registers nothing."""
    from arena.errors import PluginImportError
    from arena.home import ArenaHome
    from orchestration.plugin_check import NothingRegistered, check_plugin

    data_dir = ArenaHome.at(Path(os.path.abspath(home.expanduser()))).data_dir

    def announce(kind: str, name: str) -> None:
        console.print(f"checking {kind} {escape(name)} ...", highlight=False)

    try:
        report = check_plugin(ref, data_dir, announce)
    except (PluginImportError, NothingRegistered) as exc:
        if debug:
            raise
        raise _fail(escape(str(exc)), 2) from None
    console.print(check_table(report.results, ref))
    counts = {s: sum(r.status == s for r in report.results) for s in ("pass", "fail", "skip")}
    console.print(
        f"{len(report.results)} properties of {len(report.found)} plug-in(s): "
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped",
        highlight=False,
    )
    if report.failed:
        raise typer.Exit(1)


def check_table(results: list[Any], ref: str) -> Table:
    """One row per property: the plug-in, the property, its outcome and why."""
    styles = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]skip[/]"}
    table = Table(title=f"arena check {escape(ref)}", title_justify="left")
    table.add_column("kind")
    table.add_column("plug-in", style="bold cyan", no_wrap=True)
    table.add_column("property", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    for result in results:
        table.add_row(
            result.kind,
            escape(result.plugin),
            result.name,
            styles[result.status],
            escape(result.detail),
        )
    return table


def main() -> None:
    """Console-script entry point."""
    debug = "--debug" in sys.argv
    try:
        app()
    except Exception as exc:  # last resort: unexpected errors get one line unless --debug
        if debug:
            raise
        from arena.errors import one_line

        first = (str(exc).strip().splitlines() or [""])[0]
        errors.print(
            f"[bold red]error:[/] {escape(one_line(f'{type(exc).__name__}: {first}', 500))} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
