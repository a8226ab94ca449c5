"""C1, C3 and the CLI's handling of user mistakes: clear messages, right exit codes, no
tracebacks, nothing created and no Ray started before the config is valid."""

from __future__ import annotations

import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from orchestration.cli import app

REPO = Path(__file__).resolve().parents[2]
SUBCOMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
"""every ``arena`` subcommand, read from the app so a new one is covered without editing here"""

# The CLI as `python -m orchestration` runs it, plus a line at exit saying whether Ray was ever
# imported (config loading and --help must not import it, let alone start it).
PROBE = """
import atexit, sys
atexit.register(lambda: print(f"PROBE ray={'ray' in sys.modules}", file=sys.stderr))
sys.argv = ["arena", *sys.argv[1:]]
from orchestration.cli import main
main()
"""


def run_arena(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    if home is not None:
        env["ARENA_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def run_probed(
    *args: str, cwd: Path = REPO, home: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], bool, float]:
    """Run the CLI; return the result, whether Ray was imported, and the wall time."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    if home is not None:
        env["ARENA_HOME"] = str(home)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    probes = [line for line in result.stderr.splitlines() if line.startswith("PROBE ray=")]
    assert len(probes) == 1, result.stderr
    return result, probes[0] == "PROBE ray=True", elapsed


HELP_SECONDS = 10.0
"""`--help` must not pay for torch, Ray or MLflow: about a second here, 10 s leaves room for load"""


def test_C3_help_of_every_subcommand_exits_0_quickly_without_ray() -> None:
    assert {"tournament", "tune", "frontier", "list"} <= set(SUBCOMMANDS)
    times = {}
    for args in (["--help"], *([name, "--help"] for name in SUBCOMMANDS)):
        result, ray_imported, elapsed = run_probed(*args)
        label = " ".join(args)
        assert result.returncode == 0, (label, result.stderr)
        assert "Usage" in result.stdout and "Traceback" not in result.stderr, label
        assert not ray_imported, f"`arena {label}` imported Ray"
        assert elapsed < HELP_SECONDS, (label, elapsed)
        times[label] = elapsed
    for name in SUBCOMMANDS:
        assert name in run_probed("--help")[0].stdout
    assert "--address" in run_probed("tournament", "--help")[0].stdout
    print("C3 help times: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_C3_bad_flag_exits_2_with_usage(name: str) -> None:
    result, ray_imported, _ = run_probed(name, "--no-such-flag")
    assert result.returncode == 2, result.stderr
    assert "Usage" in result.stderr and "No such option" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not ray_imported


def test_C3_unknown_command_and_missing_argument_exit_2() -> None:
    for args in (["no-such-command"], ["tournament"], ["tournament", "a.yaml", "b.yaml"]):
        result, ray_imported, _ = run_probed(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Usage" in result.stderr and "Traceback" not in result.stderr, args
        assert not ray_imported


def test_C3_unexpected_error_is_one_line_without_debug_and_a_traceback_with_it(
    tmp_path: Path,
) -> None:
    """An error nobody anticipated (here: the tracking store under --home is not an SQLite
    database) prints one line and exits 1; ``--debug`` shows the traceback."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mlflow.db").write_text("not a database\n")
    args = ("tournament", "configs/digits_smoke.yaml", "--home", str(home))
    quiet, _, _ = run_probed(*args)
    assert quiet.returncode == 1, quiet.stderr
    assert "Traceback" not in quiet.stderr + quiet.stdout
    shown = [line for line in quiet.stderr.splitlines() if not line.startswith("PROBE")]
    assert len(shown) == 1 and shown[0].startswith("error:") and "--debug" in shown[0], shown
    loud, _, _ = run_probed(*args, "--debug")
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_list_shows_every_registered_plugin() -> None:
    import agents  # noqa: F401
    from arena.attacker import ATTACKS
    from arena.defenses import DEFENSES

    out = run_arena("list").stdout
    for name in [*DEFENSES.names(), *ATTACKS.names()]:
        assert name in out


def _structural_mistakes(c: dict[str, Any]) -> list[str]:
    """Typo key, wrong type, negative budget, empty list, NaN: pydantic reports them together."""
    c["typo_key"] = 1
    c["budgte"] = [100]
    c["victims"][0]["epochs"] = "ten"
    c["budgets"] = [-1, 100]
    c["attacks"] = []
    c["victims"][0]["lr"] = math.nan
    return ["typo_key", "budgte", "victims.0.epochs", "budgets.0", "attacks", "victims.0.lr"]


def _registry_mistakes(c: dict[str, Any]) -> list[str]:
    """NaN and negative defense strengths, typo names: checked once the structure is valid."""
    c["defenses"][1]["params"] = {"beta": math.nan}
    c["defenses"][2]["params"] = {"decimals": -3}
    c["defenses"].append("reverse_sigmod")
    c["attacks"] = ["knockof", "copycat"]
    return ["defenses.1.0.params", "defenses.2.0.params", "defenses.4.0.name", "attacks.0.name"]


@pytest.mark.parametrize("mistakes", [_structural_mistakes, _registry_mistakes])
def test_C1_bad_config_exits_before_anything_is_created(
    tmp_path: Path, smoke_config_dict: dict[str, Any], mistakes: Any
) -> None:
    paths = mistakes(smoke_config_dict)
    work = tmp_path / "work"
    work.mkdir()
    (work / "bad.yaml").write_text(yaml.safe_dump(smoke_config_dict))
    home = tmp_path / "home"
    result, ray_imported, _ = run_probed("tournament", "bad.yaml", cwd=work, home=home)
    assert result.returncode == 2, result.stderr
    listed = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    for path in paths:  # every problem on its own line, by its dotted path
        assert any(line.startswith(f"{path}:") for line in listed), (path, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert not ray_imported, "Ray was imported for an invalid config"
    assert not home.exists(), "nothing may be created for an invalid config"
    assert sorted(p.name for p in work.iterdir()) == ["bad.yaml"]


# ---- one validation: a tuning study's mistakes are a tournament's, at the study's paths -------

TUNE_SMOKE = REPO / "configs" / "tuning" / "digits_smoke.yaml"
TREE = {"dataset": "digits", "arch": "decision_tree", "max_depth": 4}
NO_EPOCHS = {"name": "knockoff", "params": {"epochs": 0}}

# a tuning-study mistake: (changes to the digits smoke study, the path it is reported at);
# the first three used to pass validation and fail as Ray trials
STUDY_MISTAKES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown substitute": ({"substitute_arch": "vgg"}, "substitute_arch"),
    "tree without substitute": ({"victim": TREE}, "substitute_arch"),
    "default unfit for the task": ({"defense": "top_k", "defaults": [{"k": 20}]}, "defaults.0"),
    "unknown attack": ({"attacks": ["knockof", "copycat"]}, "attacks.0.name"),
    "bad attack params": ({"attacks": [NO_EPOCHS]}, "attacks.0.params"),
    "unknown suite": ({"attacks": [{"suite": "strongest"}]}, "attacks"),
    "zoo attack without zoo": ({"attacks": ["knockoff", "fingerprint"]}, "attacks"),
    "unknown defense": ({"defense": "reverse_sigmod", "defaults": []}, "defense"),
    "bad fixed params": ({"fixed": {"beta": -1.0}}, "fixed"),
    "bad default params": ({"defaults": [{"beta": math.nan}]}, "defaults.0"),
    "zoo defense without zoo": ({"defense": "target_noise", "defaults": []}, "defense"),
    "unknown victim arch": ({"victim": {"dataset": "digits", "arch": "resnet9000"}}, "victim.arch"),
}  # fmt: skip


def _study(changes: dict[str, Any]) -> dict[str, Any]:
    study: dict[str, Any] = {**yaml.safe_load(TUNE_SMOKE.read_text()), **changes}
    return study


def _as_tournament(study: dict[str, Any]) -> dict[str, Any]:
    """The tournament playing a study's lineup: its victim; its defense with the fixed
    hyperparameters, then each literature default, as chains; its attacks and substitute."""
    fixed = study.get("fixed", {})
    played = [fixed, *({**fixed, **default} for default in study.get("defaults", []))]
    tournament = {
        "name": study["name"],
        "victims": [study["victim"]],
        "defenses": [[{"name": study["defense"], "params": params}] for params in played],
        "attacks": study["attacks"],
        "budgets": [study["budget"]],
    }
    if "substitute_arch" in study:
        tournament["substitute_arch"] = study["substitute_arch"]
    return tournament


def _study_path(path: str) -> str:
    """Where a problem of :func:`_as_tournament`'s tournament sits in the study."""
    if path.startswith("victims.0"):
        return "victim" + path.removeprefix("victims.0")
    chain, _, field = path.removeprefix("defenses.").partition(".0.")
    if path.startswith("defenses.") and field:
        if chain == "0":
            return "defense" if field == "name" else "fixed"
        return f"defaults.{int(chain) - 1}"
    return "defense" if path == "defenses" else path


@pytest.mark.parametrize(("changes", "where"), STUDY_MISTAKES.values(), ids=STUDY_MISTAKES.keys())
def test_a_study_reports_what_a_tournament_of_its_lineup_reports(
    changes: dict[str, Any], where: str
) -> None:
    """Every check a tournament makes on its lineup, a tuning study makes on its own: the same
    messages, each at the study's path for the same field."""
    from orchestration.config import ConfigError, parse_config
    from orchestration.tune_config import parse_tune_config

    study = _study(changes)
    with pytest.raises(ConfigError) as as_study:
        parse_tune_config(study)
    with pytest.raises(ConfigError) as as_tournament:
        parse_config(_as_tournament(study))
    found = sorted(as_study.value.problems)
    assert where in dict(found), found
    assert found == sorted((_study_path(p), m) for p, m in as_tournament.value.problems)


def test_a_bad_study_exits_2_listing_the_tournament_checks_by_the_study_paths(
    tmp_path: Path,
) -> None:
    """``arena tune`` lists a study's lineup mistakes as ``arena tournament`` lists them for the
    same lineup (exit 2, nothing created, no Ray), plus the study's own (a search-space corner
    unfit for the victim's task)."""
    study = _study(
        {
            "substitute_arch": "vgg",
            "defense": "top_k",
            "search_space": {"k": {"low": 1, "high": 20}},
            "defaults": [{"k": 20}],
            "attacks": ["knockof", NO_EPOCHS, "fingerprint"],
        }
    )
    listed = {}
    for command, config in (("tune", study), ("tournament", _as_tournament(study))):
        work = tmp_path / command
        work.mkdir()
        (work / "bad.yaml").write_text(yaml.safe_dump(config))
        home = work / "home"
        result, ray_imported, _ = run_probed(command, "bad.yaml", cwd=work, home=home)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert not ray_imported and not home.exists()
        lines = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
        listed[command] = dict(line.split(": ", 1) for line in lines)
    tune = listed["tune"]
    assert {"substitute_arch", "defaults.0", "attacks.0.name", "attacks.1.params"} <= set(tune)
    assert "fingerprint" in tune["attacks"]
    corner = tune.pop("search_space.k")
    assert corner.startswith("value 20 is invalid: defense 'top_k' on digits: k must be in 1..10")
    assert tune == {_study_path(path): message for path, message in listed["tournament"].items()}


def test_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    result = run_arena("tournament", str(tmp_path / "nope.yaml"), "--home", str(tmp_path / "h"))
    assert result.returncode == 2
    assert "file not found" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_tracking_server_is_one_clear_line(tmp_path: Path) -> None:
    # port 9 (discard) on loopback: nothing listens there
    result = run_arena(
        "tournament",
        "configs/digits_smoke.yaml",
        "--tracking-uri",
        "http://127.0.0.1:9",
        "--home",
        str(tmp_path / "h"),
    )
    assert result.returncode == 1
    assert "not reachable" in result.stderr and "Traceback" not in result.stderr


def test_unsupported_tracking_uri_is_one_clear_line(tmp_path: Path) -> None:
    result = run_arena(
        "tournament",
        "configs/digits_smoke.yaml",
        "--tracking-uri",
        "foo://bar",
        "--home",
        str(tmp_path),
    )
    assert result.returncode == 1
    assert "cannot use tracking URI 'foo://bar'" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_mid_tournament_loses_nothing_and_rerun_completes(tmp_path: Path) -> None:
    """D4/D5 at the command line: SIGTERM during a run marks the parent KILLED and keeps every
    finished match; the same command then plays only the rest, one run per match key. The smoke
    config cut to 6 matches: after two finish, two are playing and two wait."""
    from mlflow.tracking import MlflowClient

    from orchestration.tracking import MATCH_KEY_TAG, default_tracking_uri

    home = tmp_path / "home"
    env = dict(os.environ, ARENA_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    config = yaml.safe_load((REPO / "configs" / "digits_smoke.yaml").read_text())
    config["defenses"], config["budgets"] = ["none", "label_only", config["defenses"][2]], [100]
    total = 6
    (tmp_path / "six.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "orchestration", "tournament", str(tmp_path / "six.yaml")]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    finished_before_kill = 0
    for line in proc.stdout:  # wait for two matches to finish, then stop the run
        finished_before_kill += "stolen" in line
        if finished_before_kill == 2:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest

    client = MlflowClient(default_tracking_uri(home))
    experiment = client.get_experiment_by_name("digits-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("arena.kind") == "tournament"]
    matches = [r for r in runs if r.data.tags.get("arena.kind") == "match"]
    assert [p.info.status for p in parents] == ["KILLED"]
    assert 2 <= len(matches) < total and all(m.info.status == "FINISHED" for m in matches)

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    left = total - len(matches)
    assert f"{left} match(es) to play, {len(matches)} already finished" in again.stdout
    runs = client.search_runs([experiment.experiment_id])
    keys = [r.data.tags[MATCH_KEY_TAG] for r in runs if r.data.tags.get("arena.kind") == "match"]
    assert len(keys) == len(set(keys)) == total
    parent = [r for r in runs if r.data.tags.get("arena.kind") == "tournament"]
    assert [p.info.status for p in parent] == ["FINISHED"]


# ---- H5: hostile config files -----------------------------------------------------------------


# The CLI as `python -m orchestration` runs it, writing its peak memory (VmHWM: the process's own,
# unlike ru_maxrss, which a forked child inherits from the pytest process) to argv[1] at exit.
MEASURE = """
import atexit, sys
peak_file = sys.argv.pop(1)
def record():
    status = open("/proc/self/status").read().splitlines()
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    open(peak_file, "w").write(peak)
atexit.register(record)
sys.argv = ["arena", *sys.argv[1:]]
from orchestration.cli import main
main()
"""


def run_measured(
    *args: str, work: Path, home: Path, light: bool = True
) -> tuple[int, str, str, float, int]:
    """Run the CLI; return exit code, stdout, stderr, wall seconds and peak RSS in KiB. A
    ``light`` run (one that must stop before torch is imported) is capped at 1 GiB of address
    space: a bomb that went off fails it instead of taking the machine."""
    env = dict(os.environ, ARENA_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)

    def cap_memory() -> None:
        if light:
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    peak = work / "peak_kib.txt"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(peak), *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, preexec_fn=cap_memory,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    kib = int(peak.read_text())
    peak.unlink()
    return result.returncode, result.stdout, result.stderr, seconds, kib


def _alias_bomb() -> str:
    """The classic billion laughs in a plug-in parameter: 9 levels of 9 aliases, 9**9 (387
    million) values written in under 500 bytes."""
    value = "&a [" + ",".join(["lol"] * 9) + "]"
    for previous, anchor in zip("abcdefgh", "bcdefghi", strict=True):
        value = f"&{anchor} [{value}, " + ",".join([f"*{previous}"] * 8) + "]"
    return (
        "name: bomb\n"
        "victims: [{dataset: digits, arch: mlp}]\n"
        f"defenses: [[{{name: reverse_sigmoid, params: {{beta: {value}}}}}]]\n"
        "attacks: [knockoff]\n"
        "budgets: [100]\n"
    )


def _write(path: Path, content: str | bytes | None) -> None:
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


SMOKE_TEXT = (REPO / "configs" / "digits_smoke.yaml").read_text()
HOSTILE: dict[str, tuple[str | bytes | None, str]] = {
    # case: (file content, None for a directory; what the one line says)
    "alias_bomb_in_plugin_params": (_alias_bomb(), "more than 50,000 values"),
    "self_referencing_alias": ("name: &a [*a]\n", "is used inside itself"),
    "huge_scalar": (SMOKE_TEXT + f"substitute_arch: {'x' * 100_000}\n", "100,000 characters"),
    "huge_number": (SMOKE_TEXT.replace("[100, 300]", f"[1{'0' * 5000}]"), "5,001 characters"),
    "too_big": (SMOKE_TEXT + "#" * (2 << 20) + "\n", "bytes (1 MiB)"),
    "deeper_than_50": ("name: " + "[" * 60 + "]" * 60 + "\n", "nested more than 50 levels"),
    "far_too_deep": ("name: " + "[" * 100_000 + "]" * 100_000 + "\n", "nest"),
    "not_utf8": ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    "directory": (None, "is a directory"),
    "not_yaml": ("name: [unclosed\n", "not valid YAML"),
}
HOSTILE_COMMANDS = {
    "tournament": ["tournament"],
    "tune": ["tune"],
    "serve": ["serve", "--tokens", "tokens.yaml"],
}


@pytest.mark.parametrize("command", sorted(HOSTILE_COMMANDS))
def test_H5_hostile_config_files_exit_2_fast_with_one_bounded_line(
    tmp_path: Path, command: str
) -> None:
    """Alias bombs (in a plug-in parameter), huge scalars, a file above 1 MiB, deep nesting,
    non-UTF-8 bytes, a directory, bad YAML and a missing file: each is one line naming the file,
    exit 2, in well under a second past interpreter start-up, without the bomb going off and
    before torch or the plug-ins are imported."""
    cases = {**HOSTILE, "missing": (b"", "file not found")}
    figures = []
    for case, (content, says) in cases.items():
        work = tmp_path / case
        work.mkdir()
        config = work / f"{case}.yaml"
        if case != "missing":
            _write(config, content)
        home = work / "home"
        name, *flags = HOSTILE_COMMANDS[command]
        code, out, err, seconds, rss_kib = run_measured(
            name, str(config), *flags, work=work, home=home
        )
        lines = err.strip().splitlines()
        assert code == 2, (case, err)
        assert len(lines) == 1 and str(config) in lines[0] and says in lines[0], (case, err)
        assert out == "" and len(err) < 2000 and "Traceback" not in err, case
        assert seconds < 5, (case, seconds)
        assert rss_kib < 200 * 1024, (case, rss_kib)  # torch alone takes ~1 GB here
        assert not home.exists(), case
        figures.append(f"{case} {seconds:.2f} s {len(err)} B {rss_kib // 1024} MiB")
    print(f"H5 {command}: " + "; ".join(figures))


def test_H5_alias_bomb_in_plugin_params_exits_2_fast(tmp_path: Path) -> None:
    """The row's own example, reported as measured: the bomb in a defense's parameter."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb())
    assert len(config.read_bytes()) < 500
    code, out, err, seconds, rss_kib = run_measured(
        "tournament", str(config), work=tmp_path, home=tmp_path / "home"
    )
    assert code == 2 and "more than 50,000 values" in err and len(err) < 2000, err
    assert out == "" and seconds < 5 and rss_kib < 200 * 1024
    print(f"H5 alias bomb: exit {code} in {seconds:.2f} s, {len(err)} B of stderr, {rss_kib} KiB")


# ---- H6: names that reach MLflow filters, file names and HTML ----------------------------------


def test_H6_name_with_a_slash_is_refused_at_validation(
    tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    smoke_config_dict["name"] = "../../etc/o'brien"
    config = tmp_path / "slash.yaml"
    config.write_text(yaml.safe_dump(smoke_config_dict))
    result = run_arena("tournament", str(config), home=tmp_path / "home")
    assert result.returncode == 2, result.stderr
    listed = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert listed == [
        "name: Value error, must not contain '/' or '\\' (the name is used as a file name)"
    ]
    assert not (tmp_path / "home").exists()


# ---- H7: an ARENA_HOME that cannot be written --------------------------------------------------

HOME_CHECK_SECONDS = 20.0
"""the check itself takes milliseconds; validating a config imports torch and every plug-in
(4-9 s on this shared 2-core machine); the MLflow retries it replaces took ~100 s"""


@pytest.mark.parametrize(
    ("command", "home", "says"),
    [
        ("tournament", "afile/home", "cannot be created (Not a directory)"),
        ("tournament", "/sys", "is not writable (Permission denied)"),
        ("serve", "afile/home", "cannot be created (Not a directory)"),
    ],
)
def test_H7_unwritable_home_exits_2_naming_ARENA_HOME(
    tmp_path: Path, command: str, home: str, says: str
) -> None:
    """A home below a regular file cannot be created; /sys cannot be written even by root (tests
    run as root, where a chmod'ed directory stays writable)."""
    (tmp_path / "afile").write_text("a file, not a directory\n")
    target = tmp_path / home
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"attackers:\n  - {{id: eve, budget: 5, tokens: [{'t' * 20}]}}\n")
    flags = ["--tokens", str(tokens)] if command == "serve" else []
    smoke = str(REPO / "configs" / "digits_smoke.yaml")
    code, out, err, seconds, _ = run_measured(
        command, smoke, *flags, work=tmp_path, home=target, light=False
    )
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and f"ARENA_HOME {target} {says}" in lines[0], err
    assert "set --home or ARENA_HOME to a writable directory" in lines[0]
    assert "Traceback" not in err and "serving" not in out
    assert seconds < HOME_CHECK_SECONDS, seconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "tokens.yaml"]
    print(f"H7 {command} {home}: exit 2 in {seconds:.1f} s: {lines[0]}")
