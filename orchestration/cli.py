"""The ``arena`` command line: ``arena tournament CONFIG`` and ``arena list``.

User mistakes (bad configs, unknown names, missing datasets) print one line each and exit
non-zero without a traceback; ``--debug`` shows the traceback. Ray starts only once the config
has been validated.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    name="arena",
    help="Model-Stealing Arena: tournaments between defended models and model-stealing attacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@app.command()
def tournament(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="tournament YAML file")],
    address: Annotated[
        str | None,
        typer.Option(
            "--address", envvar="RAY_ADDRESS", help="Ray cluster address (default: local Ray)"
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking URI (default: sqlite under --home)",
        ),
    ] = None,
    home: Annotated[
        Path,
        typer.Option("--home", envvar="ARENA_HOME", help="caches and local results"),
    ] = Path(".arena"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Play every defense × attack × budget × seed of CONFIG on Ray and log it to MLflow."""
    from arena.errors import ArenaError
    from orchestration.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        errors.print(f"[bold red]invalid config[/] {exc.source}:", highlight=False)
        for path, message in exc.problems:
            errors.print(f"  {path or '<root>'}: {message}", highlight=False)
        raise typer.Exit(2) from None

    home = home.expanduser().resolve()
    os.environ["ARENA_HOME"] = str(home)
    # SIGTERM (e.g. from a scheduler) ends the run like Ctrl-C: parent run marked KILLED,
    # victim services stopped, finished matches kept for the rerun
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _run(config, address, tracking_uri, home)
    except ArenaError as exc:
        if debug:
            raise
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail(
            "interrupted; rerun the same command to play the remaining matches", 130
        ) from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(config: object, address: str | None, tracking_uri: str | None, home: Path) -> None:
    from arena.referee import MatchResult
    from arena.specs import MatchSpec
    from arena.victims import default_victim_cache
    from orchestration.config import TournamentConfig
    from orchestration.leaderboard import rich_table
    from orchestration.tournament import MatchFailure, run_tournament
    from orchestration.tracking import Tracker, default_tracking_uri

    assert isinstance(config, TournamentConfig)
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    home.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(home)
    console.print(f"[bold]{config.name}[/]: tracking at {uri}")
    tracker = Tracker(uri, config.tracking.experiment, artifact_root=home / "mlartifacts")

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
                f"  {outcome.defense} × {outcome.attack} @ {outcome.budget} (seed {outcome.seed}): "
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
            cache_dir=default_victim_cache(),
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
    console.print(rich_table(outcome.leaderboard, f"Leaderboard — {config.name}"))
    console.print(
        f"played {outcome.played}, skipped {outcome.skipped} (already finished), "
        f"failed {len(outcome.failures)}; wall time {outcome.wall_seconds:.0f}s"
    )
    console.print(
        f"MLflow parent run {outcome.parent_run_id}; open the UI with:\n"
        f"  mlflow ui --backend-store-uri {uri}"
    )
    if outcome.failures:
        raise _fail(f"{len(outcome.failures)} match(es) failed; rerun to retry them")


@app.command("list")
def list_plugins() -> None:
    """List the registered defenses, attacks, architectures and datasets."""
    import agents  # noqa: F401  (registers the attacks)
    from arena.attacker import ATTACKS
    from arena.data import DATASETS
    from arena.defenses import DEFENSES
    from arena.models import ARCHITECTURES

    for registry in (DEFENSES, ATTACKS, ARCHITECTURES, DATASETS):
        table = Table(title=f"{registry.kind}s", title_justify="left", show_header=False, box=None)
        table.add_column("name", style="bold cyan")
        table.add_column("description")
        for name, description in registry.describe().items():
            table.add_row(name, description)
        console.print(table)
        console.print()


def main() -> None:
    """Console-script entry point."""
    debug = "--debug" in sys.argv
    try:
        app()
    except Exception as exc:  # last resort: unexpected errors get one line unless --debug
        if debug:
            raise
        errors.print(
            f"[bold red]error:[/] {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback)",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
