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
    from soilmoisture.protocol import predict

    command("predict", predict.add_arguments)(predict.handle)


_register_builtin()
