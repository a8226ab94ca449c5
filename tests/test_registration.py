"""Every attack in ``agents`` and every defense in ``arena.defenses`` is registered by importing
the package: a module missing from its ``__init__`` imports would silently drop out of every
tournament, ``arena list`` and the conformance tests."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from arena.attacker import ATTACKS, Attacker
from arena.defenses import DEFENSES, Defense

PACKAGES = {"agents": (Attacker, ATTACKS), "arena.defenses": (Defense, DEFENSES)}
"""each package whose modules define plug-ins: the plug-ins' base class and registry"""


def imported_by_init(package: str) -> set[str]:
    """The submodules the package's ``__init__.py`` imports, read from its source: importing a
    submodule anywhere else (another test, this walk) registers it too, so what the running
    interpreter holds cannot show a forgotten import."""
    init = importlib.import_module(package).__file__
    assert init is not None
    tree = ast.parse(Path(init).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            names |= {f"{package}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{package}."):
            names.add(str(node.module))
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith(f"{package}.")}
    return names


def plugin_classes() -> dict[str, list[type]]:
    """Per public module of the packages, the plug-in classes it defines that nothing subclasses
    (a shared base such as a surrogate-gradient defense is not a plug-in itself)."""
    defined: dict[str, list[type]] = {}
    for package, (base, _) in PACKAGES.items():
        path = importlib.import_module(package).__path__
        for info in pkgutil.iter_modules(path):
            module = importlib.import_module(f"{package}.{info.name}")
            defined[module.__name__] = [
                cls
                for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, base) and cls is not base and cls.__module__ == module.__name__
            ]
    everything = [cls for classes in defined.values() for cls in classes]
    return {
        module: [c for c in classes if not any(o is not c and issubclass(o, c) for o in everything)]
        for module, classes in defined.items()
        if not module.rsplit(".", 1)[-1].startswith("_")
    }


MODULES = plugin_classes()


def test_the_walk_finds_the_plugins() -> None:
    found = {f"{c.__module__}.{c.__qualname__}" for cs in MODULES.values() for c in cs}
    assert "agents.knockoff.Knockoff" in found
    assert "arena.defenses.rounding.Rounding" in found
    assert "arena.defenses.surrogate.SurrogateGradientDefense" not in found  # a shared base
    assert not any(m.startswith("agents._") for m in MODULES)  # private helpers are skipped


@pytest.mark.parametrize("module", sorted(m for m, classes in MODULES.items() if classes))
def test_every_plugin_module_is_registered_by_its_package(module: str) -> None:
    package = module.rsplit(".", 1)[0]
    where = f"{package.replace('.', '/')}/__init__.py"
    assert module in imported_by_init(package), (
        f"{module} defines plug-ins but {where} does not import it: `import {package}` (what "
        "tournaments, `arena list` and the conformance tests do) would not register them"
    )
    _, registry = PACKAGES[package]
    for cls in MODULES[module]:
        names = [n for n in registry.names() if registry.get(n) is cls]
        assert names, f"{module}.{cls.__qualname__} is not registered: decorate it with .register"
