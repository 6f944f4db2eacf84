"""The search strategies, in one place: every strategy registers itself here with its name, its ``run`` function,
a one-line help and the typed options of its config section; the CLI's ``--strategy`` choices, the config's
sections and the report read this registry.

A strategy is ``run(ctx: SearchContext) -> None``: it proposes candidates, evaluates them through ``ctx`` and
leaves them in ``ctx.store``. Its options are a pydantic model; the section with the strategy's name in the
search config (``evolution: {population: 8}``) is validated against it, and ``ctx.options()`` returns it (the
defaults when the section is absent).

Built-in strategies live in the modules of :data:`BUILTIN_MODULES`, loaded on first use. Third-party packages
add strategies with the entry-point group ``rankcraft.strategies`` (each entry point names a module that calls
:func:`register_strategy` when imported). The modules are imported by name (``importlib``) rather than with
``import`` statements: they depend on this registry, not the other way round, as plugins of a host.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from pydantic import BaseModel, ConfigDict

from rankcraft.errors import ConfigError

#: modules that register the built-in strategies
BUILTIN_MODULES = ("rankcraft.search.strategies", "rankcraft.search.predictor_rl", "rankcraft.search.tpe",
                   "rankcraft.search.sigeo")
ENTRY_POINT_GROUP = "rankcraft.strategies"


class NoOptions(BaseModel):
    """A strategy without options (its config section, if given, must be empty)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy.

    ``trains_supernet``: it trains weight-sharing networks itself (it cannot run on a tabular benchmark, whose
    results are for standalone training). ``prepare(ctx)``: an optional check run before any training (e.g. the
    evolution seeds resolve)."""

    name: str
    run: Callable
    help: str
    options: type[BaseModel] = NoOptions
    trains_supernet: bool = False
    prepare: Callable | None = None


_REGISTRY: dict[str, StrategySpec] = {}
_loaded = False


def register_strategy(name: str, *, help: str, options: type[BaseModel] = NoOptions, trains_supernet: bool = False,
                      prepare: Callable | None = None) -> Callable:
    """Decorator: register ``run`` as strategy ``name``. Registering a name twice (from another function) is an
    error; re-importing the same module is not."""

    def deco(run: Callable) -> Callable:
        old = _REGISTRY.get(name)
        if old is not None and (old.run.__module__, old.run.__qualname__) != (run.__module__, run.__qualname__):
            raise ConfigError(f"search strategy '{name}' is registered twice ({old.run.__module__} and "
                              f"{run.__module__})")
        _REGISTRY[name] = StrategySpec(name, run, help, options, trains_supernet, prepare)
        return run

    return deco


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
            raise ConfigError(f"search strategy plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from None


def strategies() -> dict[str, StrategySpec]:
    """Every registered strategy by name (built-ins and plugins)."""
    _load()
    return dict(_REGISTRY)


def strategy_names() -> list[str]:
    return list(strategies())


def get_strategy(name: str) -> StrategySpec:
    """The strategy ``name``; an unknown name is a :class:`ConfigError` listing the registered ones."""
    found = strategies().get(name)
    if found is None:
        raise ConfigError(f"unknown search strategy '{name}'; choose from {', '.join(strategy_names())}")
    return found


__all__ = ["BUILTIN_MODULES", "NoOptions", "StrategySpec", "get_strategy", "register_strategy", "strategies",
           "strategy_names"]
