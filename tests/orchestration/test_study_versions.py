"""A tuning study remembers the plug-in versions its trials were scored with; resuming it after
a bump is refused with the fix, since its trials would mix old and new code on one frontier."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from orchestration.study import VERSIONS_ATTR, check_versions, open_study
from orchestration.study_storage import StudyError
from orchestration.tune_config import load_tune_config

REPO = Path(__file__).resolve().parents[2]


def test_a_study_keeps_its_versions_and_refuses_a_bump() -> None:
    config = load_tune_config(REPO / "configs" / "tuning" / "digits_smoke.yaml")
    storage = optuna.storages.InMemoryStorage()
    study = open_study(config, storage)
    versions = study.user_attrs[VERSIONS_ATTR]
    assert versions[f"defense:{config.defense}"] == 1
    assert versions["dataset:digits"] == 1 and any(k.startswith("attack:") for k in versions)

    assert open_study(config, storage).user_attrs[VERSIONS_ATTR] == versions  # resumes

    bumped = {**versions, f"defense:{config.defense}": 2}
    with pytest.raises(StudyError) as caught:
        check_versions(study, config.name, bumped)
    message = str(caught.value)
    assert f"defense:{config.defense} v1 -> v2" in message and "new name" in message


def test_a_study_names_its_objectives() -> None:
    config = load_tune_config(REPO / "configs" / "tuning" / "digits_smoke.yaml")
    storage = optuna.storages.InMemoryStorage()
    open_study(config, storage)
    assert optuna.load_study(study_name=config.name, storage=storage).metric_names == [
        "utility",
        "protection",
    ]
    with_cost = config.model_copy(update={"name": "with-cost", "cost": "latency"})
    assert open_study(with_cost, storage).metric_names == [
        "utility",
        "protection",
        "latency",
    ]


def test_a_study_from_before_versions_adopts_them() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    check_versions(study, "old", {"defense:mad": 1})
    assert study.user_attrs[VERSIONS_ATTR] == {"defense:mad": 1}
