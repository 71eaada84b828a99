"""Build and load the native LSTM kernel (``model/native/lstm.c``) with the machine's C compiler.

The kernel is compiled at first use, once per number of units (a compile-time constant), with
``-O3 -march=native``, into a cache folder that is not under version control:

* ``SOILMOISTURE_NATIVE_CACHE`` when set;
* else ``<checkout>/.cache/native`` when the package runs from a source checkout (git-ignored);
* else ``$XDG_CACHE_HOME/soilmoisture/native`` (default ``~/.cache/soilmoisture/native``).

A library's file name carries a hash of the source, the compiler command, the compiler version and the
CPU's instruction-set flags, so a changed source or another machine sharing the folder builds its own.
Building needs no network: only the source in this package and ``gcc`` (or ``$CC``). Every failure
raises :class:`~soilmoisture.errors.NativeBuildError` with the command and the compiler's message.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from soilmoisture.errors import NativeBuildError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "native" / "lstm.c"
ENV_CACHE = "SOILMOISTURE_NATIVE_CACHE"
ENV_CC = "CC"
ABI_VERSION = 1
CFLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11", "-ffp-contract=fast",
          "-fno-math-errno", "-fno-trapping-math")
BUILD_TIMEOUT_S = 120

_LOADED: dict[int, ctypes.CDLL] = {}
_LOCK = threading.Lock()


def cache_root() -> Path:
    """The project's cache folder: ``<checkout>/.cache`` from a source checkout (git-ignored), else
    ``$XDG_CACHE_HOME/soilmoisture`` (default ``~/.cache/soilmoisture``)."""
    root = Path(__file__).resolve().parents[3]
    if (root / ".git").exists() and (root / "src" / "soilmoisture").is_dir() and os.access(root, os.W_OK):
        return root / ".cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "soilmoisture"


def cache_dir() -> Path:
    """Where compiled kernels are kept (see the module docstring)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else cache_root() / "native"


def _compiler() -> str:
    cc = os.environ.get(ENV_CC) or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise NativeBuildError(f"C compiler {cc!r} not found on PATH (set $CC, or use protocol.engine: jax)")
    return path


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30,
                              check=False).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def library_path(units: int) -> tuple[Path, list[str]]:
    """The cached library for ``units`` and the command that builds it."""
    cc = _compiler()
    if not SOURCE.is_file():
        raise NativeBuildError(f"kernel source {SOURCE} is missing from the installed package")
    cmd_tail = list(CFLAGS) + [f"-DNH={int(units)}"]
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(cmd_tail).encode(), _version(cc).encode(), _cpu_flags().encode(),
                 platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    path = cache_dir() / f"lstm_h{int(units)}_{key.hexdigest()[:16]}.so"
    return path, [cc] + cmd_tail


def _build(path: Path, cmd: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NativeBuildError(f"cannot create the kernel cache {path.parent}: {e} "
                               f"(set {ENV_CACHE} to a writable folder)") from None
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=path.parent)
    os.close(fd)
    full = cmd + ["-o", tmp, str(SOURCE), "-lm"]
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        raise NativeBuildError(f"building the native kernel failed: {' '.join(full)}: {e}") from None
    if proc.returncode != 0:
        os.unlink(tmp)
        msg = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise NativeBuildError(f"building the native kernel failed (exit {proc.returncode}): {' '.join(full)}: "
                               + " | ".join(msg))
    os.replace(tmp, path)            # atomic: a concurrent build of the same key just wins or loses the race
    log.info("native engine: compiled %s", path.name)


def load(units: int) -> ctypes.CDLL:
    """The kernel for ``units`` hidden units, built if needed (thread-safe; once per process)."""
    with _LOCK:
        if units in _LOADED:
            return _LOADED[units]
        path, cmd = library_path(units)
        if not path.is_file():
            _build(path, cmd)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise NativeBuildError(f"loading the native kernel {path} failed: {e} (delete it to rebuild)") from None
        if lib.sm_abi_version() != ABI_VERSION or lib.sm_units() != units:
            raise NativeBuildError(f"native kernel {path} does not match this package (delete it to rebuild)")
        _declare(lib)
        _LOADED[units] = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    i, p, lg = ctypes.c_int, ctypes.c_void_p, ctypes.c_long
    lib.sm_n_params.argtypes = [i, i]
    lib.sm_n_params.restype = lg
    lib.sm_fit.argtypes = [i] * 8 + [p] * 5 + [i, i, p, p, p, p, p, p, p, p, p, p, p, p]
    lib.sm_fit.restype = i
    lib.sm_predict.argtypes = [i] * 5 + [p] * 6
    lib.sm_predict.restype = i
    lib.sm_loss_grad.argtypes = [i] * 5 + [p] * 4 + [i, i, p, p, ctypes.c_int32, p, p, p, p, p]
    lib.sm_loss_grad.restype = i


def available(units: int = 16) -> tuple[bool, str]:
    """(True, "") when the kernel for ``units`` builds and loads here, else (False, the reason)."""
    try:
        load(units)
    except NativeBuildError as e:
        return False, str(e)
    return True, ""
