"""The training benchmark runs end to end at CI size (a correctness check of the script, never timed)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_reports_the_native_engine_against_the_jax_engine(capsys, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("SOILMOISTURE_NATIVE_CACHE", str(tmp_path / "unused"))   # the bench builds its own
    import bench_training

    bench_training.main(["--models", "3", "--epochs", "2", "--probes", "8", "--days", "60", "--skip-keras",
                         "--jax-models", "2", "--jax-epochs", "2", "--threads", "2"])
    out = capsys.readouterr().out
    assert "Native engine (3 models x 2 epochs, 2 threads)" in out and "compiling the kernel" in out
    assert "Full protocol (610 models x 20 epochs) with the native engine" in out
    assert "Native vs JAX engine per model-epoch" in out
    assert "JAX engine (2 models x 2 epochs" in out
    sys.modules.pop("bench_training", None)
