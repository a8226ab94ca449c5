"""C1/C2: bad configs fail at load with every problem listed by dotted path, and nothing else."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents._thief_recipe import MIN_STEPS
from orchestration.config import ConfigError, load_config, parse_config
from orchestration.tune_config import parse_tune_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.matches(), "a shipped config must expand to at least one match"


def test_default_config_is_at_least_4_defenses_2_attacks_2_budgets() -> None:
    config = load_config(REPO / "configs" / "fashion_mnist.yaml")
    assert len(config.defenses) >= 4 and len(config.attacks) >= 2 and len(config.budgets) >= 2
    assert len(config.matches()) == len(config.defenses) * len(config.attacks) * len(config.budgets)


def _problems(raw: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return dict(info.value.problems)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda c: c.update(budgets=[-5]), "budgets.0"),
        (lambda c: c.update(budgets=[]), "budgets"),
        (lambda c: c.update(attacks=[]), "attacks"),
        (lambda c: c.update(defenses=[]), "defenses"),
        (lambda c: c.update(seeds=["x"]), "seeds.0"),
        (lambda c: c.update(budgte=[1]), "budgte"),
        (lambda c: c["victims"][0].update(epoch=3), "victims.0.epoch"),
        (lambda c: c["victims"][0].update(dataset="cifar1000"), "victims.0.dataset"),
        (lambda c: c["victims"][0].update(arch="resnet9000"), "victims.0.arch"),
        (lambda c: c["victims"][0].update(lr=math.nan), "victims.0.lr"),
        (lambda c: c["defenses"][1].update(params={"beta": math.nan}), "defenses.1.0.params"),
        (lambda c: c["defenses"][1].update(params={"beta": -1.0}), "defenses.1.0.params"),
        (lambda c: c["defenses"][2].update(params={"decimal": 1}), "defenses.2.0.params"),
        (lambda c: c["defenses"].append("reverse_sigmod"), "defenses.4.0.name"),
        (lambda c: c["attacks"].append("knockof"), "attacks.2.name"),
        (lambda c: c["attacks"][0].update(params={"epochs": 0}), "attacks.0.params"),
        (lambda c: c.update(ray={"gpus_per_victim": -1}), "ray.gpus_per_victim"),
        (lambda c: c.update(substitute_arch="vgg"), "substitute_arch"),
        (lambda c: c.update(budgets="100"), "budgets"),
        (lambda c: c.update(budgets=[math.inf]), "budgets.0"),
        (lambda c: c.update(seeds=[]), "seeds"),
        (lambda c: c.update(victims=[]), "victims"),
        (lambda c: c["victims"][0].update(epochs="ten"), "victims.0.epochs"),
        (lambda c: c["victims"][0].update(epochs=-1), "victims.0.epochs"),
        (lambda c: c["defenses"][1].update(params={"beta": math.inf}), "defenses.1.0.params"),
        (lambda c: c["defenses"][1].update(params={"beta": "strong"}), "defenses.1.0.params"),
        (lambda c: c["defenses"][1].update(params={"betta": 1.0}), "defenses.1.0.params"),
        (lambda c: c["attacks"][0].update(params={"lr": math.nan}), "attacks.0.params"),
        (lambda c: c["tracking"].update(experimnt="x"), "tracking.experimnt"),
        (lambda c: c.update(best_response={"trials": -1}), "best_response.trials"),
        (lambda c: c.update(best_response={"trials": 2.5}), "best_response.trials"),
        (lambda c: c.update(best_response={"trials": "4"}), "best_response.trials"),
        (lambda c: c.update(best_response={"trials": True}), "best_response.trials"),
        (lambda c: c.update(best_response={"trials": 65}), "best_response.trials"),
        (lambda c: c.update(best_response={"trails": 4}), "best_response.trails"),
    ],
)
def test_C1_bad_config_names_the_dotted_path(
    smoke_config_dict: dict[str, Any], mutate: Any, path: str
) -> None:
    mutate(smoke_config_dict)
    problems = _problems(smoke_config_dict)
    assert path in problems, problems


def test_C1_every_problem_is_listed_at_once(smoke_config_dict: dict[str, Any]) -> None:
    smoke_config_dict["budgets"] = [0]
    smoke_config_dict["attacks"].append("nope")
    smoke_config_dict["defenses"].append({"name": "rounding", "params": {"decimals": -3}})
    problems = _problems(smoke_config_dict)
    assert "budgets.0" in problems
    # pydantic errors come first; registry checks run only on a structurally valid config
    smoke_config_dict["budgets"] = [10]
    problems = _problems(smoke_config_dict)
    assert {"attacks.2.name", "defenses.4.0.params"} <= set(problems)


def test_unknown_name_lists_known_names(smoke_config_dict: dict[str, Any]) -> None:
    smoke_config_dict["attacks"] = ["knockof"]
    message = _problems(smoke_config_dict)["attacks.0.name"]
    assert "knockoff" in message and "copycat" in message


def test_top_level_must_be_a_mapping() -> None:
    assert "" in _problems([1, 2, 3])


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_equal_plugins_get_equal_match_keys(smoke_config_dict: dict[str, Any]) -> None:
    explicit = copy.deepcopy(smoke_config_dict)
    explicit["attacks"] = [
        {"name": "knockoff", "params": {"epochs": None, "lr": 0.001, "min_steps": MIN_STEPS}}
    ]
    implicit = copy.deepcopy(smoke_config_dict)
    implicit["attacks"] = ["knockoff"]
    keys = {m.key() for m in parse_config(explicit).matches()}
    assert keys == {m.key() for m in parse_config(implicit).matches()}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(
        [
            "name",
            "victims",
            "defenses",
            "attacks",
            "budgets",
            "seeds",
            "ray",
            "tracking",
            "substitute_arch",
            "best_response",
            "extra",
        ]
    ),
    value=json_values,
)
def test_C2_config_fuzz_raises_only_config_errors(
    smoke_config_dict: dict[str, Any], key: str, value: Any
) -> None:
    raw = copy.deepcopy(smoke_config_dict)
    raw[key] = value
    with contextlib.suppress(ConfigError):  # any other exception fails the test
        parse_config(raw).matches()


# C2 beyond the top level: a random value (or a deletion) at a random nested location
NESTED_SITES: list[tuple[str | int, ...]] = [
    ("victims", 0),
    ("victims", 0, "dataset"),
    ("victims", 0, "arch"),
    ("victims", 0, "epochs"),
    ("victims", 0, "lr"),
    ("victims", 0, "seed"),
    ("victims", 0, "surprise"),
    ("defenses", 0),
    ("defenses", 1),
    ("defenses", 1, "name"),
    ("defenses", 1, "params"),
    ("defenses", 1, "params", "beta"),
    ("defenses", 1, "params", "gamma"),
    ("defenses", 2, "params", "decimals"),
    ("attacks", 0),
    ("attacks", 0, "name"),
    ("attacks", 0, "params"),
    ("attacks", 0, "params", "epochs"),
    ("attacks", 1, "params", "lr"),
    ("budgets", 0),
    ("seeds", 0),
    ("ray", "object_store_mb"),
    ("ray", "cpus_per_match"),
    ("ray", "gpus_per_victim"),
    ("tracking", "experiment"),
]
DELETE = object()


def _place(raw: dict[str, Any], site: tuple[str | int, ...], value: Any) -> None:
    """Set (or delete) ``raw`` at ``site``, creating nothing the config does not already have
    above the last step (a string defense entry becomes a mapping first)."""
    node: Any = raw
    for step in site[:-1]:
        child = node[step]
        if isinstance(child, str):  # "none" is shorthand for {"name": "none"}
            child = node[step] = {"name": child}
        node = child
    last = site[-1]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            del node[last]
    else:
        node[last] = value


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(NESTED_SITES), json_values | st.just(DELETE)),
        min_size=1,
        max_size=3,
    )
)
def test_C2_nested_config_fuzz_raises_only_config_errors(
    smoke_config_dict: dict[str, Any], edits: list[tuple[tuple[str | int, ...], Any]]
) -> None:
    raw = copy.deepcopy(smoke_config_dict)
    for site, value in edits:
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier edit removed it
            _place(raw, site, value)
    try:
        parse_config(raw).matches()
    except ConfigError as exc:
        assert exc.problems, "a config error must list at least one problem"
        assert all(isinstance(where, str) and message for where, message in exc.problems)


TUNE_SMOKE = REPO / "configs" / "tuning" / "digits_smoke.yaml"


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(
        [
            "name",
            "victim",
            "defense",
            "fixed",
            "search_space",
            "attacks",
            "budget",
            "trials",
            "concurrency",
            "utility_floor",
            "utility",
            "cost",
            "defaults",
            "storage",
            "best_response",
            "extra",
        ]
    ),
    value=json_values,
)
def test_C2_tune_config_fuzz_raises_only_config_errors(key: str, value: Any) -> None:
    """The tuning-study config (``arena tune``) holds to the same contract."""
    raw = yaml.safe_load(TUNE_SMOKE.read_text())
    raw[key] = value
    with contextlib.suppress(ConfigError):  # any other exception fails the test
        config = parse_tune_config(raw)
        config.space()
        config.specs_for({})


# ---- H5/H6: hostile values and names ----------------------------------------------------------

BAD_NAMES = {
    "slash": "runs/o'brien",
    "backslash": "runs\\o'brien",
    "newline": "o'brien\nsmoke",
    "nul": "o'brien\x00",
    "terminal escape": "o'brien\x1b[31m",
    "bidi override": "o'brien\u202e",
    "dot-dot": "..",
    "too long": "n" * 201,
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_H6_names_with_separators_or_control_characters_are_refused(
    smoke_config_dict: dict[str, Any], name: str
) -> None:
    """Tournament and study names become MLflow tags, journal file names and HTML titles."""
    smoke_config_dict["name"] = name
    message = _problems(smoke_config_dict)["name"]
    assert "\n" not in message and "\x00" not in message and "\x1b" not in message
    study = yaml.safe_load(TUNE_SMOKE.read_text())
    with pytest.raises(ConfigError) as info:
        parse_tune_config({**study, "name": name})
    assert "name" in dict(info.value.problems)


def test_H6_quotes_brackets_and_markup_in_names_are_accepted(
    smoke_config_dict: dict[str, Any],
) -> None:
    name = 'o\'brien "smoke" [bold] <b>&amp; $x$ | 100%'
    smoke_config_dict["name"] = name
    assert parse_config(smoke_config_dict).name == name
    smoke_config_dict["tracking"]["experiment"] = "team/o'brien"  # MLflow names may be paths
    assert parse_config(smoke_config_dict).tracking.experiment == "team/o'brien"
    smoke_config_dict["tracking"]["experiment"] = "o'brien\r"
    assert "tracking.experiment" in _problems(smoke_config_dict)


def test_H5_problems_are_bounded_and_quote_short_prefixes(
    smoke_config_dict: dict[str, Any],
) -> None:
    """A thousand bad budgets give 20 problems and a count; a huge value is quoted by a prefix."""
    smoke_config_dict["budgets"] = [-1] * 1000
    problems = _problems(smoke_config_dict)
    assert len(problems) == 21 and problems["…"] == "980 more problem(s)"
    smoke_config_dict["budgets"] = [100]
    smoke_config_dict["attacks"][0]["params"] = {"epochs": [list(range(1000))] * 1000}
    smoke_config_dict["victims"][0]["arch"] = "x" * 100_000
    problems = _problems(smoke_config_dict)
    assert all(len(message) <= 400 for message in problems.values())
    quoted = problems["victims.0.arch"].split("unknown architecture ")[1].split(";")[0]
    assert len(quoted) <= 60 and "..." in quoted
    smoke_config_dict["victims"][0]["arch"] = "mlp"
    epochs = _problems(smoke_config_dict)["attacks.0.params"]
    assert "epochs must be an integer >= 1, got [[0, 1, 2, 3, 4, 5, ...]" in epochs
    assert len(epochs) < 200


def test_H5_anchors_and_aliases_within_the_budget_still_load(tmp_path: Path) -> None:
    text = (REPO / "configs" / "digits_smoke.yaml").read_text()
    text = text.replace(
        "{name: knockoff, params: {epochs: 10}}", "{name: knockoff, params: &e {epochs: 10}}"
    )
    text = text.replace("{name: copycat, params: {epochs: 10}}", "{name: copycat, params: *e}")
    assert "*e" in text
    config = tmp_path / "aliases.yaml"
    config.write_text(text)
    assert [a.params for a in load_config(config).attacks] == [{"epochs": 10}, {"epochs": 10}]


def test_H5_directory_and_non_utf8_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_config(latin)
