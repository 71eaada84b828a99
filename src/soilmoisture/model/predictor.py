"""``soilmoisture predict``: a registered model applied to a daily table (or the REMEDHUS CSV export,
read by :mod:`soilmoisture.sources.remedhus`).

The registered model (``protocol.run``) is the Keras network of the final model; its MLmodel metadata
holds the variant's feature list and the training probes' normalisation statistics, so inputs are
normalised exactly as in training ((x - mean) / std, missing -> 0; thesis 3.3.1). Maps reuse
:func:`load_predictor` and :meth:`Predictor.predict`.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - numpy/pandas imported lazily so `soilmoisture --help` stays fast
    import numpy as np
    import pandas as pd

from soilmoisture.errors import DataError

log = logging.getLogger(__name__)

@dataclass
class Predictor:
    """A trained network with the feature list and normalisation statistics it was trained with."""

    model: Any
    features: list[str]
    mean: np.ndarray   # (F,)
    std: np.ndarray    # (F,)
    meta: dict = field(default_factory=dict)

    def predict(self, x_raw: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted SSM (N, T) in m3/m3 from raw features (N, T, F) in ``features`` order (NaN = missing)."""
        from soilmoisture.model.interface import normalise
        from soilmoisture.model.keras_model import predict_normalised

        return predict_normalised(self.model, normalise(x_raw, self.mean, self.std), batch_size)


def resolve_model_uri(text: str) -> str:
    """``name``, ``name@alias``, ``name/3`` or an MLflow URI (``runs:/``, ``models:/``) -> an MLflow URI.

    A bare name means its ``champion`` alias.
    """
    if re.match(r"^[a-z][a-z0-9+.-]*:/", text):
        return text
    if "@" in text:
        return f"models:/{text}"
    m = re.match(r"^(.+)/(\d+)$", text)
    if m:
        return f"models:/{m.group(1)}/{m.group(2)}"
    from soilmoisture.tracking import CHAMPION_ALIAS

    return f"models:/{text}@{CHAMPION_ALIAS}"


def load_predictor(model_uri: str) -> Predictor:
    """Load a model logged by the protocol (Keras network + normalisation metadata)."""
    import mlflow
    import numpy as np

    uri = resolve_model_uri(model_uri)
    try:
        meta = mlflow.models.get_model_info(uri).metadata or {}
        model = mlflow.tensorflow.load_model(uri)
    except mlflow.exceptions.MlflowException as e:
        raise DataError(model_uri, f"cannot load the model ({uri}): {str(e).splitlines()[0]}") from None
    for key in ("features", "mean", "std"):
        if key not in meta:
            raise DataError(model_uri, "model metadata lacks the normalisation statistics (not logged by "
                                       "soilmoisture train?)", field=key)
    return Predictor(model, list(meta["features"]), np.asarray(meta["mean"], np.float32),
                     np.asarray(meta["std"], np.float32), dict(meta))


def predict_table(pred: Predictor, daily: pd.DataFrame, probes: pd.DataFrame, *, allow_missing: bool = False,
                  input_name: str = "input") -> pd.DataFrame:
    """Predicted SSM per probe and day: columns probe_id, date, ssm_pred (m3/m3) and ssm (observed, if given).

    A feature of the model absent from the input raises DataError unless ``allow_missing`` (then it is
    filled with the training mean, i.e. 0 after normalisation, and a warning names it).
    """
    import numpy as np
    import pandas as pd

    from soilmoisture.schema import STATIC_FEATURES, TARGET
    from soilmoisture.tensors import build_tensors

    daily, probes = daily.copy(), probes.copy()
    missing = [f for f in pred.features
               if f not in (probes.columns if f in STATIC_FEATURES else daily.columns)]
    if missing and not allow_missing:
        raise DataError(input_name, f"model features missing from the input: {', '.join(missing)} "
                                    "(--allow-missing-features fills them with the training mean)")
    for f in missing:
        log.warning("feature %s missing from %s: filled with the training mean", f, input_name)
        (probes if f in STATIC_FEATURES else daily)[f] = np.nan
    if TARGET not in daily.columns:
        daily[TARGET] = np.nan
    tens = build_tensors(daily, probes, pred.features, daily_path=input_name, probes_path=input_name)
    empty = [f for j, f in enumerate(pred.features) if f not in missing and not np.isfinite(tens.x[..., j]).any()]
    if empty:
        log.warning("features without any value in %s (predicted as the training mean): %s", input_name,
                    ", ".join(empty))
    ssm = pred.predict(tens.x)
    P, T = ssm.shape
    return pd.DataFrame({"probe_id": np.repeat(tens.probe_ids, T), "date": np.tile(tens.dates.values, P),
                         "ssm_pred": ssm.ravel().astype(np.float64), "ssm": tens.y.ravel().astype(np.float64)})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """predict SSM per probe and day with a registered model (writes Parquet)"""
    p.add_argument("--model", required=True,
                   help="registered name[@alias|/version] (bare name = @champion) or an MLflow URI (runs:/...)")
    p.add_argument("--input", required=True, type=Path,
                   help="daily table (Parquet, data contract) or the REMEDHUS export CSV")
    p.add_argument("--probes", type=Path, default=None,
                   help="probe table (Parquet) for static features (default: probes.parquet beside --input)")
    p.add_argument("--output", required=True, type=Path, help="output Parquet: probe_id, date, ssm_pred, ssm")
    p.add_argument("--allow-missing-features", action="store_true",
                   help="fill model features absent from the input with the training mean instead of failing")


def handle(params: Any, args: argparse.Namespace) -> Path:
    """Run ``soilmoisture predict``: load model and input, predict, write the output atomically."""
    import pandas as pd

    from soilmoisture import tracking

    tracking.configure(params)
    src: Path = args.input
    if not src.is_file():
        raise DataError(src, "input file not found")
    if src.suffix.lower() == ".csv":
        from soilmoisture.sources.remedhus import read_remedhus

        daily, probes = read_remedhus(src)
    else:
        try:
            daily = pd.read_parquet(src)
        except Exception as e:  # pyarrow raises several types for a non-Parquet file
            raise DataError(src, f"not a readable Parquet file: {e}") from None
        probes_path = args.probes or src.with_name("probes.parquet")
        if probes_path.is_file():
            probes = pd.read_parquet(probes_path)
        else:
            log.warning("no probe table at %s: static features unavailable", probes_path)
            probes = pd.DataFrame({"probe_id": sorted(daily["probe_id"].astype(str).unique())})
    predictor = load_predictor(args.model)
    out = predict_table(predictor, daily, probes, allow_missing=args.allow_missing_features, input_name=str(src))
    dst: Path = args.output
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    out.to_parquet(tmp, index=False)
    os.replace(tmp, dst)
    log.info("wrote %d predictions of %d probes to %s", len(out), out["probe_id"].nunique(), dst)
    return dst


__all__ = ["Predictor", "add_arguments", "handle", "load_predictor", "predict_table", "resolve_model_uri"]
