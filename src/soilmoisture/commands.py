"""Subcommands beyond the pipeline stages (``predict``, ...).

Each entry maps a name to ``(add_arguments, handler)``; the handler gets the parsed
:class:`~soilmoisture.config.Params` and the argparse namespace. Heavy imports stay inside handlers.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from soilmoisture.config import Params

Handler = Callable[[Params, argparse.Namespace], Any]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand ``name`` whose arguments are added by ``add_arguments``."""

    def deco(fn: Handler) -> Handler:
        COMMANDS[name] = (add_arguments, fn)
        return fn

    return deco


def _register_builtin() -> None:
    """Commands whose modules are light to import (heavy imports stay in their handlers)."""
    from soilmoisture import backends
    from soilmoisture.model import predictor

    command("predict", predictor.add_arguments)(predictor.handle)
    command("backends", backends.add_arguments)(backends.handle)
    command("deliver", _deliver_arguments)(_deliver)
    command("ablate", _ablate_arguments)(_ablate)


def _ablate_arguments(p: argparse.ArgumentParser) -> None:
    """run the input sets/methods of ablate.configs through the protocol as one tracked experiment (reports/ablate)"""


def _ablate(params: Params, args: argparse.Namespace) -> Any:
    from soilmoisture.protocol.ablate import handle

    return handle(params, args)


def _deliver_arguments(p: argparse.ArgumentParser) -> None:
    """deliver the next N days of held-back simulated Sentinel scenes into paths.landing (docs/retrain.md)"""
    p.add_argument("--days", type=int, default=30, help="days of scenes to deliver (default: 30)")


def _deliver(params: Params, args: argparse.Namespace) -> Any:
    from soilmoisture.simulate.deliver import run

    return run(params, args.days)


_register_builtin()
