"""Example plug-ins for Model-Stealing Arena; importing this package registers all three."""

from arena_example_plugins import confidence_cap, margin_thief, tiny_cnn

__all__ = ["confidence_cap", "margin_thief", "tiny_cnn"]
