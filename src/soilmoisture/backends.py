"""Shared backends by URL: which MLflow, Optuna, Prefect and DVC stores a run talks to, and whether they answer.

The embedded defaults need no setup (SQLite under ``mlruns/`` and ``optuna/``, a temporary Prefect API, a
local-path DVC remote); a team points the same code at servers by URL (``docs/backends.md``):

=================  ==========================================  ===============================================
backend            configured by                               environment override
=================  ==========================================  ===============================================
mlflow tracking    ``tracking.uri``                            ``MLFLOW_TRACKING_URI``
optuna storage     ``tune.storage``                            ``SOILMOISTURE_OPTUNA_STORAGE``
prefect api        (Prefect's own setting)                     ``PREFECT_API_URL`` (or ``prefect config set``)
dvc remote         ``.dvc/config`` default remote              ``.dvc/config.local`` (``dvc remote modify --local``)
=================  ==========================================  ===============================================

:func:`check` answers "is it reachable, and which version" for each; :func:`preflight` runs the checks a
stage needs before any training starts, so a wrong host, password or database name fails in a second with
the backend and the (password-masked) URL named, instead of after MLflow's HTTP retries or an hour of work.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soilmoisture import tracking
from soilmoisture.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from soilmoisture.config import Params

MLFLOW = "mlflow tracking"
OPTUNA = "optuna storage"
PREFECT = "prefect api"
DVC = "dvc remote"
BACKENDS = (MLFLOW, OPTUNA, PREFECT, DVC)
# What each stage talks to (checked before it starts; the other stages use local files only).
STAGE_BACKENDS: dict[str, tuple[str, ...]] = {"train": (MLFLOW,), "tune": (MLFLOW, OPTUNA), "map": (MLFLOW,)}
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Status:
    """The answer of one backend: ``detail`` is its version(s) when ``ok``, else the problem."""

    backend: str
    url: str          # password-masked
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.backend:<16} {'ok' if self.ok else 'FAILED':<7} {self.url}  {self.detail}"


class _Problem(Exception):
    """Internal: a probe failed; the message is already user-facing (and masked)."""


# --- SQL databases (Optuna storage, an MLflow database store) ------------------------------------------
STORAGE_ENV = "SOILMOISTURE_OPTUNA_STORAGE"  # overrides tune.storage (e.g. a PostgreSQL URL with a password)


def storage_url(params: Params) -> str:
    """``SOILMOISTURE_OPTUNA_STORAGE`` if set, else ``tune.storage``; a relative SQLite path is made absolute
    (against the project root) and its folder created."""
    url = os.environ.get(STORAGE_ENV) or params.tune.storage
    m = re.match(r"^sqlite:///(?!/)(.+)$", url)
    if m:
        db = params.path(m.group(1)).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{db}"
    elif url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


def describe_sql_error(exc: BaseException) -> str:
    """One line saying what kind of failure a database connection hit, from the driver's own message.

    PostgreSQL answers "Connection refused", 'database "x" does not exist', 'password authentication
    failed for user "u"' or 'role "u" does not exist'; the kind comes first so the user knows what to fix.
    """
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    low = text.lower()
    if isinstance(exc, ModuleNotFoundError) or "no module named" in low:
        kind = f"database driver not installed ({text})"
        return tracking.mask_url(kind)
    if "database" in low and "does not exist" in low:
        kind = "database does not exist"
    elif "password authentication failed" in low or ("role" in low and "does not exist" in low) \
            or "no password supplied" in low or "authentication failed" in low:
        kind = "authentication failed (check the user and password: PGPASSWORD or ~/.pgpass)"
    elif any(s in low for s in ("connection refused", "could not translate host name", "timeout expired",
                                "timed out", "no route to host", "could not connect", "name or service not known")):
        kind = "not reachable"
    elif "unable to open database file" in low or "file is not a database" in low:
        kind = "cannot open the SQLite file"
    else:
        kind = "error"
    return tracking.mask_url(f"{kind}: {text}")


def sql_version(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Connect to the database of a SQLAlchemy ``url`` and return e.g. ``PostgreSQL 15.20``; _Problem if not.

    A SQLite file that does not exist yet is fine when it can be created (MLflow and Optuna create it and
    its folders on first use); an existing one is opened read-only, so a check never creates or locks anything.
    """
    if url.startswith("sqlite:"):
        return _sqlite_version(url, timeout)
    import sqlalchemy as sa

    connect_args: dict[str, Any] = {}
    if re.match(r"^postgres(ql)?(\+psycopg2)?://", url):
        connect_args["connect_timeout"] = max(1, int(timeout))  # libpq: a black-holed host fails, not hangs
    try:
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                raw = str(conn.execute(sa.text("select version()")).scalar() or "")
        finally:
            engine.dispose()
    except Exception as e:  # SQLAlchemy/driver errors of every kind: classify by message
        raise _Problem(describe_sql_error(e)) from e
    m = re.match(r"^(PostgreSQL [\d.]+)", raw)
    return m.group(1) if m else (raw.split(",")[0][:60] or "unknown server version")


def _sqlite_version(url: str, timeout: float) -> str:
    import sqlite3

    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return f"SQLite {sqlite3.sqlite_version} (in memory)"
    db = Path(path)
    if not db.exists():  # MLflow and Optuna create the file (and its folders) on first use
        parent = next((p for p in db.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise _Problem(f"cannot create the SQLite file: {parent} is not a writable folder")
        return f"SQLite {sqlite3.sqlite_version} (new file, created on first use)"
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            conn.execute("pragma schema_version").fetchone()  # fails on a file that is not a database
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise _Problem(describe_sql_error(e)) from e
    return f"SQLite {sqlite3.sqlite_version}"


# --- HTTP servers (MLflow tracking server, Prefect API) -------------------------------------------------
def http_get(url: str, timeout: float) -> str:
    """GET ``url``; the body as text. _Problem naming the kind of failure (not reachable, authentication, HTTP)."""
    import urllib.error
    import urllib.request

    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    headers = {"Accept": "application/json, text/plain"}
    parts = urlsplit(url)
    if parts.username is not None:
        # urllib cannot take user:password@host: send it as HTTP basic authentication instead.
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a configured http(s) URL
            return resp.read(65536).decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise _Problem(f"authentication failed (HTTP {e.code} from {tracking.mask_url(url)})") from e
        raise _Problem(f"HTTP {e.code} {e.reason} from {tracking.mask_url(url)} (is this the right server?)") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Problem(f"not reachable: {reason}") from e


def _strip_json(text: str) -> str:
    """Prefect answers ``"3.8.8"`` (JSON), MLflow ``3.17.2`` (plain text)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return str(value)


# --- one probe per backend ------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def mlflow_status(uri: str, timeout: float = DEFAULT_TIMEOUT_S) -> Status:
    """A tracking server (``http(s)://``: ``/health`` and ``/version``) or a database store the client opens itself."""
    masked = tracking.mask_url(uri)
    try:
        if uri.startswith(("http://", "https://")):
            base = uri.rstrip("/")
            health = http_get(f"{base}/health", timeout)
            if health.strip('"').upper() != "OK":
                raise _Problem(f"/health answered {health[:80]!r}, not OK (is this an MLflow server?)")
            detail = f"MLflow server {_strip_json(http_get(f'{base}/version', timeout))}"
        elif re.match(r"^(sqlite|postgres(ql)?|mysql|mssql)(\+\w+)?:", uri):
            detail = f"{sql_version(uri, timeout)}, MLflow client {_version('mlflow')} (database store)"
        elif uri.startswith("file:") or "://" not in uri:
            raise _Problem("the file store is read-only in MLflow 3 (maintenance mode); use sqlite:///<path> "
                           "or a tracking server")
        else:
            return Status(MLFLOW, masked, True, f"not checked (scheme {uri.split(':', 1)[0]!r}); "
                                                f"MLflow client {_version('mlflow')}")
    except _Problem as p:
        return Status(MLFLOW, masked, False, str(p))
    return Status(MLFLOW, masked, True, detail)


def optuna_status(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> Status:
    """The study database (any SQLAlchemy URL Optuna's RDBStorage takes)."""
    masked = tracking.mask_url(url)
    try:
        detail = f"{sql_version(url, timeout)}, Optuna {_version('optuna')}"
    except _Problem as p:
        return Status(OPTUNA, masked, False, str(p))
    return Status(OPTUNA, masked, True, detail)


def prefect_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile; None = temporary local API."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    from prefect.settings import get_current_settings  # ~1.5 s: only when the variable is not set

    return get_current_settings().api.url or None


def prefect_status(api_url: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> Status:
    """A Prefect server's ``/health`` and ``/admin/version``; no URL = the temporary API each run starts."""
    if not api_url:
        return Status(PREFECT, "(PREFECT_API_URL not set)", True,
                      f"temporary local API started per flow run, Prefect {_version('prefect')}")
    masked = tracking.mask_url(api_url)
    try:
        base = api_url.rstrip("/")
        health = http_get(f"{base}/health", timeout)
        if health.strip().lower() != "true":
            raise _Problem(f"/health answered {health[:80]!r}, not true (PREFECT_API_URL must end in /api)")
        detail = f"Prefect server {_strip_json(http_get(f'{base}/admin/version', timeout))}"
    except _Problem as p:
        return Status(PREFECT, masked, False, str(p))
    return Status(PREFECT, masked, True, detail)


def dvc_remote(root: Path) -> tuple[str | None, str | None]:
    """(name, url) of the DVC project's default remote in ``root`` (``.dvc/config`` + ``config.local``)."""
    from dvc.config import Config

    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        return None, None
    conf = Config(dvc_dir=str(dvc_dir), validate=True)
    name = conf["core"].get("remote")
    if not name:
        return None, None
    remote = conf["remote"].get(name)
    if remote is None:
        return name, None
    return name, str(remote["url"])


def dvc_status(root: Path) -> Status:
    """The default DVC remote: a local path must be a writable folder (or creatable); other schemes need their plugin."""
    try:
        name, url = dvc_remote(root)
    except Exception as e:  # dvc's ConfigError on a malformed .dvc/config
        return Status(DVC, str(root / ".dvc" / "config"), False, f"cannot read the DVC configuration: {e}")
    version = f"DVC {_version('dvc')}"
    if name is None:
        return Status(DVC, "(no default remote)", True, f"none configured (`dvc remote add -d ...`), {version}")
    if url is None:
        return Status(DVC, f"remote {name!r}", False, f"default remote {name!r} is not defined in .dvc/config")
    masked = tracking.mask_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else "local"
    label = f"{name}: {masked}"
    if scheme == "local":
        path = Path(url) if Path(url).is_absolute() else (root / ".dvc" / url)
        path = Path(os.path.normpath(path))
        label = f"{name}: {path}"
        if path.is_dir():
            if not os.access(path, os.W_OK):
                return Status(DVC, label, False, "local-path remote is not writable")
            return Status(DVC, label, True, f"local-path remote, {version}")
        parent = next((p for p in path.parents if p.exists()), None)
        if path.exists() or parent is None or not os.access(parent, os.W_OK):
            return Status(DVC, label, False, f"local-path remote cannot be created ({parent} is not writable)")
        return Status(DVC, label, True, f"local-path remote (folder created by the first `dvc push`), {version}")
    plugin = {"s3": "dvc-s3", "gs": "dvc-gs", "gcs": "dvc-gs", "azure": "dvc-azure", "ssh": "dvc-ssh",
              "http": "dvc-http", "https": "dvc-http", "webdav": "dvc-webdav", "hdfs": "dvc-hdfs"}.get(scheme)
    if plugin and _version(plugin) == "not installed":
        return Status(DVC, label, False, f"the {plugin} plugin is not installed (pip install {plugin})")
    # Object storage answers only with credentials and network: `dvc push`/`dvc status -c` are its real test.
    return Status(DVC, label, True, f"{scheme} remote, not probed (run `dvc status -c`), {version}"
                                    + (f", {plugin} {_version(plugin)}" if plugin else ""))


# --- what the commands call -------------------------------------------------------------------------------
def urls(params: Params) -> dict[str, str | None]:
    """The URL each backend would use now (environment overrides applied, relative SQLite paths made absolute)."""
    return {MLFLOW: tracking.tracking_uri(params), OPTUNA: storage_url(params)}


def check(params: Params, which: Iterable[str] = BACKENDS, timeout: float = DEFAULT_TIMEOUT_S) -> list[Status]:
    """The status of each backend in ``which`` (default: all four), in that order."""
    u = urls(params) if {MLFLOW, OPTUNA} & set(which) else {}
    probes = {MLFLOW: lambda: mlflow_status(str(u[MLFLOW]), timeout),
              OPTUNA: lambda: optuna_status(str(u[OPTUNA]), timeout),
              PREFECT: lambda: prefect_status(prefect_api_url(), timeout),
              DVC: lambda: dvc_status(params.root)}
    unknown = [w for w in which if w not in probes]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    return [probes[w]() for w in which]


def raise_on_failure(statuses: list[Status]) -> None:
    """BackendError naming the first backend that failed (every failure is in the message when several did)."""
    failed = [s for s in statuses if not s.ok]
    if not failed:
        return
    first = failed[0]
    problem = first.detail
    if len(failed) > 1:
        problem += "; also " + "; ".join(f"{s.backend} backend at {s.url}: {s.detail}" for s in failed[1:])
    raise BackendError(first.backend, first.url, problem)


def preflight(params: Params, stage: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Check the backends ``stage`` talks to before it starts; BackendError naming the one that does not answer."""
    which = STAGE_BACKENDS.get(stage, ())
    if which:
        raise_on_failure(check(params, which, timeout))


# --- `soilmoisture backends check` ------------------------------------------------------------------------
_NAMES = {"mlflow": MLFLOW, "optuna": OPTUNA, "prefect": PREFECT, "dvc": DVC}


def add_arguments(p: Any) -> None:
    """check the configured MLflow, Optuna, Prefect and DVC backends: reachable, which version"""
    p.add_argument("action", choices=["check"], help="check: report each backend; exit 2 naming any that fails")
    p.add_argument("--only", action="append", choices=sorted(_NAMES), default=[],
                   help="check only this backend (repeatable; default: all four)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per connection (default 5)")


def handle(params: Params, args: Any) -> list[Status]:
    """Print one line per backend (URL password-masked); BackendError (exit 2) naming those that fail."""
    which = [_NAMES[n] for n in args.only] or list(BACKENDS)
    statuses = check(params, which, timeout=args.timeout)
    for s in statuses:
        print(s.line(), flush=True)
    raise_on_failure(statuses)
    return statuses
