"""``soilmoisture predict``: a registered model applied to a probe record, read through the ingest step.

Inputs come through :func:`soilmoisture.harmonise.read_for_prediction`: the readers and data rules of ingest
(sigma0 z-score and ceiling, frozen days, unit conversions), so a value training would have dropped is never
predicted from (STYLE: one input path; this module reads no source format itself).

Two kinds of registered model (``protocol.run``):

* unseen site: the Keras network of the final model; its MLmodel metadata holds the variant's feature list and
  the training probes' normalisation statistics ((x - mean) / std, missing -> 0; thesis 3.3.1). Maps reuse
  :func:`load_predictor` and :meth:`Predictor.predict`;
* known site (``protocol/known_site.py``): the evaluated members with each known probe's calibration,
  climatology and interval (:class:`soilmoisture.model.site.SiteModel`). A probe it does not know is predicted by
  the uncalibrated members and flagged ``calibrated = False`` (``--known-only`` refuses instead).
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


def _model_info(model_uri: str) -> tuple[str, dict]:
    import mlflow

    uri = resolve_model_uri(model_uri)
    try:
        return uri, mlflow.models.get_model_info(uri).metadata or {}
    except mlflow.exceptions.MlflowException as e:
        raise DataError(model_uri, f"cannot load the model ({uri}): {str(e).splitlines()[0]}") from None


def load_predictor(model_uri: str) -> Predictor:
    """Load an unseen-site model logged by the protocol (Keras network + normalisation metadata)."""
    import mlflow
    import numpy as np

    uri, meta = _model_info(model_uri)
    if meta.get("kind") == "known_site":
        raise DataError(model_uri, "is a known-site model (it knows its probes); maps need an unseen-site model")
    try:
        model = mlflow.tensorflow.load_model(uri)
    except mlflow.exceptions.MlflowException as e:
        raise DataError(model_uri, f"cannot load the model ({uri}): {str(e).splitlines()[0]}") from None
    for key in ("features", "mean", "std"):
        if key not in meta:
            raise DataError(model_uri, "model metadata lacks the normalisation statistics (not logged by "
                                       "soilmoisture train?)", field=key)
    return Predictor(model, list(meta["features"]), np.asarray(meta["mean"], np.float32),
                     np.asarray(meta["std"], np.float32), dict(meta))


def load_site_model(model_uri: str) -> Any:
    """Load a known-site model (:class:`soilmoisture.model.site.SiteModel`) from the registry."""
    import tempfile

    import mlflow

    from soilmoisture.model.site import SiteModel

    uri, meta = _model_info(model_uri)
    if meta.get("kind") != "known_site":
        raise DataError(model_uri, "is not a known-site model: it has no per-probe calibration (train it with "
                                   "protocol.mode: known_site)")
    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=d)
        except mlflow.exceptions.MlflowException as e:
            raise DataError(model_uri, f"cannot download the model ({uri}): {str(e).splitlines()[0]}") from None
        folder = next(Path(local).rglob("site.json"), None)
        if folder is None:
            raise DataError(model_uri, "known-site model without its site-model folder (site.json)")
        site = SiteModel.load(folder.parent)
    site.meta.setdefault("model_uri", uri)
    return site


def load_model(model_uri: str) -> Any:
    """A :class:`Predictor` (unseen site) or a ``SiteModel`` (known site), by the model's metadata."""
    _, meta = _model_info(model_uri)
    return load_site_model(model_uri) if meta.get("kind") == "known_site" else load_predictor(model_uri)


def _check_features(features: list[str], daily: pd.DataFrame, probes: pd.DataFrame, allow_missing: bool,
                    input_name: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The model's raw input columns present (DataError naming the missing ones, unless ``allow_missing``)."""
    import numpy as np

    from soilmoisture import features as feat
    from soilmoisture.schema import STATIC_FEATURES

    daily, probes = daily.copy(), probes.copy()
    expanded = feat.expand(list(features))
    needed = [f for f in expanded if f not in feat.DERIVED] + \
        [r for r in feat.raw_inputs([f for f in expanded if f in feat.DERIVED]) if r not in feat.OPTIONAL_INPUTS]
    missing = [f for f in dict.fromkeys(needed)
               if f not in (probes.columns if f in STATIC_FEATURES else daily.columns)]
    if missing and not allow_missing:
        raise DataError(input_name, f"model features missing from the input: {', '.join(missing)} "
                                    "(--allow-missing-features fills them with the training mean)")
    for f in missing:
        log.warning("feature %s missing from %s: filled with the training mean", f, input_name)
        (probes if f in STATIC_FEATURES else daily)[f] = np.nan
    return daily, probes, missing


def predict_table(pred: Predictor, daily: pd.DataFrame, probes: pd.DataFrame, *, allow_missing: bool = False,
                  input_name: str = "input") -> pd.DataFrame:
    """Predicted SSM per probe and day: columns probe_id, date, ssm_pred (m3/m3) and ssm (observed, if given).

    A feature of the model absent from the input raises DataError unless ``allow_missing`` (then it is
    filled with the training mean, i.e. 0 after normalisation, and a warning names it).
    """
    import numpy as np
    import pandas as pd

    from soilmoisture.schema import TARGET
    from soilmoisture.tensors import build_tensors

    daily, probes, missing = _check_features(pred.features, daily, probes, allow_missing, input_name)
    if TARGET not in daily.columns:
        daily[TARGET] = np.nan
    tens = build_tensors(daily, probes, pred.features, daily_path=input_name, probes_path=input_name)
    empty = [f for j, f in enumerate(pred.features) if f not in missing and not np.isfinite(tens.x[..., j]).any()]
    if empty and not allow_missing:
        raise DataError(input_name, f"model features with no value in the input: {', '.join(empty)} "
                                    "(--allow-missing-features predicts them as the training mean)")
    if empty:
        log.warning("features without any value in %s (predicted as the training mean): %s", input_name,
                    ", ".join(empty))
    ssm = pred.predict(tens.x)
    P, T = ssm.shape
    return pd.DataFrame({"probe_id": np.repeat(tens.probe_ids, T), "date": np.tile(tens.dates.values, P),
                         "ssm_pred": ssm.ravel().astype(np.float64), "ssm": tens.y.ravel().astype(np.float64)})


def predict_site_table(site: Any, daily: pd.DataFrame, probes: pd.DataFrame, *, allow_missing: bool = False,
                       input_name: str = "input") -> pd.DataFrame:
    """A known-site model on a harmonised daily table: per probe and day ``ssm_pred`` (ensemble of calibrated
    members, m3/m3), ``ssm_lower``/``ssm_upper`` (interval), ``ssm`` (observed), ``calibrated`` (probe known).

    Series start on the model's own first training day (``site.start``) as in training, so the network's state
    and the derived features' references (fit days before ``site.fit_end``) are those of the protocol.
    """
    import numpy as np
    import pandas as pd

    from soilmoisture.features import FeatureOptions
    from soilmoisture.schema import TARGET
    from soilmoisture.tensors import build_tensors

    daily, probes, _ = _check_features(site.features, daily, probes, allow_missing, input_name)
    if TARGET not in daily.columns:
        daily[TARGET] = np.nan
    first = pd.to_datetime(daily["date"]).min()
    if first > pd.Timestamp(site.start):
        log.warning("%s starts on %s, the model's series on %s: the days between are missing inputs, so the "
                    "estimates differ from those of a full record", input_name, f"{first:%Y-%m-%d}", site.start)
    opts = site.meta.get("features_options") or {}
    options = FeatureOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
    tens = build_tensors(daily, probes, site.features, start=site.start, drop_flagged=bool(site.meta.get(
        "drop_flagged_ssm", False)), daily_path=input_name, probes_path=input_name, fit_end=site.fit_end,
        options=options)
    trained_on = [f for f in tens.features if f not in set(site.meta.get("empty_in_training", []))]
    empty = [f for f in trained_on if not np.isfinite(tens.x[..., tens.features.index(f)]).any()]
    if empty and not allow_missing:
        raise DataError(input_name, f"model features with no value in the input: {', '.join(empty)} "
                                    "(--allow-missing-features predicts them as the training mean)")
    out = site.predict(site.network_predictions(tens.x), tens.probe_ids, tens.dates)
    P, T = out["ssm_pred"].shape
    return pd.DataFrame({"probe_id": np.repeat(tens.probe_ids, T), "date": np.tile(tens.dates.values, P),
                         "ssm_pred": out["ssm_pred"].ravel(), "ssm_lower": out["ssm_lower"].ravel(),
                         "ssm_upper": out["ssm_upper"].ravel(), "ssm": tens.y.ravel().astype(np.float64),
                         "calibrated": np.repeat(out["calibrated"], T)})


def add_flags(out: pd.DataFrame, daily: pd.DataFrame) -> pd.DataFrame:
    """Per row: ``observed`` (a valid reading that day), ``filled`` (none, inside the probe's record), ``extended``
    (after its last valid reading), ``overpass`` (a valid sigma0 that day), ``sigma0_removed`` and ``frozen`` (the
    data rules of ingest). A frozen day gets no estimate (NaN): the thesis' rule 3.2.1 takes those days out."""
    import numpy as np
    import pandas as pd

    d = daily.copy()
    d["date"] = pd.to_datetime(d["date"]).astype("datetime64[ns]")
    d["probe_id"] = d["probe_id"].astype(str)
    cols = {"sigma0_vv": np.nan, "frozen": False, "sigma0_outlier": False}
    for c, v in cols.items():
        if c not in d.columns:
            d[c] = v
    d = d[["probe_id", "date", *cols]].drop_duplicates(["probe_id", "date"], keep="last")
    o = out.copy()
    o["date"] = pd.to_datetime(o["date"]).astype("datetime64[ns]")
    o = o.merge(d, on=["probe_id", "date"], how="left")
    o["overpass"] = np.isfinite(o.pop("sigma0_vv").to_numpy(dtype=float, na_value=np.nan))
    o["sigma0_removed"] = o.pop("sigma0_outlier").fillna(False).astype(bool)
    o["frozen"] = o["frozen"].fillna(False).astype(bool)
    o["observed"] = np.isfinite(o["ssm"].to_numpy(dtype=float))
    last = o[o["observed"]].groupby("probe_id")["date"].max()
    first = o[o["observed"]].groupby("probe_id")["date"].min()
    lo, hi = o["probe_id"].map(first), o["probe_id"].map(last)
    o["extended"] = (~o["observed"]) & (hi.isna() | (o["date"] > hi))
    o["filled"] = (~o["observed"]) & lo.notna() & (o["date"] >= lo) & (o["date"] <= hi)
    for c in ("ssm_pred", "ssm_lower", "ssm_upper"):
        if c in o.columns:
            o.loc[o["frozen"], c] = np.nan
    return o


def add_arguments(p: argparse.ArgumentParser) -> None:
    """predict SSM per probe and day with a registered model: fills gaps, extends records (writes Parquet)"""
    p.add_argument("--model", required=True,
                   help="registered name[@alias|/version] (bare name = @champion) or an MLflow URI (runs:/...)")
    p.add_argument("--input", required=True, type=Path,
                   help="the probes' record: REMEDHUS export (.csv), ISMN archive (.zip/folder) or a daily table "
                        "(.parquet); read with the readers and data rules of ingest")
    p.add_argument("--probes", type=Path, default=None,
                   help="probe table (Parquet) of a daily-table input (default: probes.parquet beside --input)")
    p.add_argument("--output", required=True, type=Path,
                   help="output Parquet: probe_id, date, ssm_pred, ssm_lower, ssm_upper, ssm and the row flags")
    p.add_argument("--mode", choices=["auto", "known_site", "unseen_site"], default="auto",
                   help="known_site requires a model with per-probe calibration (default: the model's own)")
    p.add_argument("--known-only", action="store_true",
                   help="known-site model: refuse probes it does not know instead of predicting them uncalibrated")
    p.add_argument("--allow-missing-features", action="store_true",
                   help="fill model features absent from the input with the training mean instead of failing")


def predict_file(params: Any, model_uri: str, src: Path, *, probes_path: Path | None = None, mode: str = "auto",
                 known_only: bool = False, allow_missing: bool = False) -> tuple[pd.DataFrame, Any]:
    """(predictions with flags, model) for the record ``src`` (no file written)."""
    from soilmoisture.harmonise import read_for_prediction
    from soilmoisture.model.site import SiteModel

    if mode == "known_site":
        model = load_site_model(model_uri)
    else:
        model = load_model(model_uri)
    daily, probes, _ = read_for_prediction(src, params, probes_path)
    name = str(src)
    if isinstance(model, SiteModel):
        unknown = sorted(set(probes["probe_id"].astype(str)) - set(model.probes))
        if unknown and known_only:
            raise DataError(src, f"probes unknown to the known-site model {model_uri}: {', '.join(unknown)} "
                                 "(without --known-only they are predicted uncalibrated, flagged)", field="probe_id")
        if unknown:
            log.warning("probes unknown to %s, predicted by the uncalibrated network (calibrated = False): %s",
                        model_uri, ", ".join(unknown))
        out = predict_site_table(model, daily, probes, allow_missing=allow_missing, input_name=name)
    else:
        out = predict_table(model, daily, probes, allow_missing=allow_missing, input_name=name)
        out["calibrated"] = False
    return add_flags(out, daily), model


def handle(params: Any, args: argparse.Namespace) -> Path:
    """Run ``soilmoisture predict``: load model and input, predict, write the output atomically."""
    from soilmoisture import tracking

    tracking.configure(params)
    out, _ = predict_file(params, args.model, args.input, probes_path=args.probes, mode=args.mode,
                          known_only=args.known_only, allow_missing=args.allow_missing_features)
    dst: Path = args.output
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    out.to_parquet(tmp, index=False)
    os.replace(tmp, dst)
    log.info("wrote %d estimates of %d probes to %s (%d filled gap days, %d extension days, %d uncalibrated rows)",
             len(out), out["probe_id"].nunique(), dst, int(out["filled"].sum()), int(out["extended"].sum()),
             int((~out["calibrated"]).sum()))
    return dst


__all__ = ["Predictor", "add_arguments", "add_flags", "handle", "load_model", "load_predictor", "load_site_model",
           "predict_file", "predict_site_table", "predict_table", "resolve_model_uri"]
