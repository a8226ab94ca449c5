"""The example plug-ins pass the arena's conformance kit, and do what they say."""

from __future__ import annotations

import arena_example_plugins  # noqa: F401  (registers the plug-ins)
import torch

from arena.defenses import DEFENSES
from arena.registry import build_plugin
from arena.testing import check_architecture, check_attack, check_defense


def test_confidence_cap_conforms() -> None:
    check_defense("confidence_cap")
    check_defense("confidence_cap", {"cap": 0.55})


def test_margin_thief_conforms() -> None:
    check_attack("margin_thief", bad_params=[{"lr": 2.0}, {"epochs": 1.5}])


def test_tiny_cnn_conforms() -> None:
    check_architecture("tiny_cnn")


def test_confidence_cap_caps_and_keeps_the_label() -> None:
    probs = torch.tensor([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    cap = build_plugin(DEFENSES, "confidence_cap", {"cap": 0.8})
    out = cap.respond(probs, torch.zeros(3, 1, 4, 4), None)
    expected = torch.tensor([[0.8, 0.12, 0.08], [0.5, 0.3, 0.2], [0.8, 0.1, 0.1]])
    torch.testing.assert_close(out, expected)
    assert DEFENSES.version("confidence_cap") == 1
