"""The thin ``soilmoisture`` command: one subcommand per stage, each calling :mod:`soilmoisture.stages`.

Errors of the platform print one line (``error: <what, where>``) and exit with status 2; so does an
operating-system error on a file (``OSError``: permissions, a full disk), which names the file. The full
traceback only with ``--debug``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from soilmoisture.errors import SoilMoistureError

STAGES: dict[str, str] = {
    "simulate": "generate the simulated study area (raw files in the real formats + truth)",
    "ingest": "read raw sources into the harmonised daily table (data/interim)",
    "validate": "Great Expectations quality gate; publishes data/processed on success",
    "describe": "exploratory figures of the processed table (thesis 3.2.6)",
    "train": "leave-one-probe-out protocol tracked in MLflow; registers the final model",
    "evaluate": "compare the latest protocol run with ECV_SM, CSM and baselines; tables, figures, HTML report",
    "tune": "Optuna hyperparameter search (thesis 3.3.1); resumable, shareable by several workers",
    "map": "daily SSM maps of map.region with the registered model (COG stack, daily COGs, CF NetCDF or Zarr; STAC)",
}
# Stage functions whose name differs from the command (``map`` would shadow the builtin).
STAGE_FUNCTIONS: dict[str, str] = {"map": "map_"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", type=Path, help="parameter file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set protocol.repeats=2 (repeatable)")


def _add_map_options(p: argparse.ArgumentParser) -> None:
    """``map`` shortcuts for its most used keys (the same as --set map.format=... / --set map.bbox=[...])."""
    from soilmoisture.config import MAP_FORMATS

    p.add_argument("--format", choices=MAP_FORMATS, default=None, help="product format (map.format; docs/maps.md)")
    p.add_argument("--bbox", nargs=4, type=float, default=None, metavar=("WEST", "SOUTH", "EAST", "NORTH"),
                   help="area in degrees WGS84 (map.bbox; default: the region's whole tile)")


def _map_overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    if getattr(args, "format", None):
        out["map.format"] = args.format
    if getattr(args, "bbox", None):
        out["map.bbox"] = list(args.bbox)
    return out


def build_parser(extra: dict[str, Callable[[argparse.ArgumentParser], None]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soilmoisture", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        _add_common(p)
        if name == "map":
            _add_map_options(p)
    for name, adder in (extra or {}).items():
        p = sub.add_parser(name, help=adder.__doc__)
        _add_common(p)
        adder(p)
    return parser


def _extra_commands() -> dict[str, Callable[[argparse.ArgumentParser], None]]:
    from soilmoisture import commands

    return commands.COMMANDS


def main(argv: list[str] | None = None) -> int:
    extras = _extra_commands()
    parser = build_parser({k: v[0] for k, v in extras.items()})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # Prefect's client (Dask runners) logs every API request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        from soilmoisture import config

        overrides = dict(config.parse_override(o) for o in args.overrides)
        overrides.update(_map_overrides(args) if args.command == "map" else {})
        params = config.load(args.params, overrides)
        if args.command in STAGES:
            from soilmoisture import stages

            getattr(stages, STAGE_FUNCTIONS.get(args.command, args.command))(params)
        else:
            extras[args.command][1](params, args)
    except SoilMoistureError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        print(f"error: {os_error_line(e)} (--debug shows where)", file=sys.stderr)
        return 2
    return 0


def os_error_line(e: OSError) -> str:
    """One line for an operating-system error: the file(s) it names and the system's reason."""
    where = ": ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else f"{type(e).__name__}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
