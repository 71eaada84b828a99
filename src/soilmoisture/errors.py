"""A small family of exceptions that say what went wrong, where, and what to do.

The command line prints ``str(exc)`` on one line and exits non-zero; tests match the message text.
"""
from __future__ import annotations

from pathlib import Path


class SoilMoistureError(Exception):
    """Base class: every error the platform raises on purpose."""

    def __reduce__(self) -> tuple:
        # Pickled as (class, message, attributes), not by re-calling __init__ (whose arguments differ from the
        # message): an error raised in a Dask worker process reaches the caller as itself (soilmoisture.runner).
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type, args: tuple, state: dict) -> SoilMoistureError:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class ConfigError(SoilMoistureError):
    """A parameter is unknown, missing or out of range. ``key`` is its dotted name."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"params: '{key}': {problem}")


class DataError(SoilMoistureError):
    """An input file is missing, malformed or inconsistent. ``path`` names it, ``field`` the column/band."""

    def __init__(self, path: str | Path | None, problem: str, field: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.problem = problem
        where = self.path or "<data>"
        if field:
            where += f" [{field}]"
        super().__init__(f"{where}: {problem}")


class OutputError(SoilMoistureError):
    """An output file or folder cannot be written (read-only, full, another owner). ``path`` names it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class QualityGateError(SoilMoistureError):
    """The expectation suite failed: nothing downstream was published."""

    def __init__(self, failures: list[str], docs_path: str | None = None) -> None:
        self.failures = failures
        self.docs_path = docs_path
        msg = "quality gate failed: " + "; ".join(failures)
        if docs_path:
            msg += f" (data docs: {docs_path})"
        super().__init__(msg)


class ProtocolError(SoilMoistureError):
    """The training protocol cannot run as configured (e.g. no training probe left)."""


class BackendError(SoilMoistureError):
    """A tracking/storage backend is unreachable or misconfigured. The URL is given password-masked."""

    def __init__(self, backend: str, url: str, problem: str) -> None:
        self.backend = backend
        self.url = url
        super().__init__(f"{backend} backend at {url}: {problem}")


class NativeBuildError(SoilMoistureError):
    """The native training kernel cannot be compiled or loaded here (no C compiler, build failure)."""
