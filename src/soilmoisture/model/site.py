"""A known-site model: the ensemble members with their normalisation, and each known probe's calibration.

Known site, new period (DESIGN "two questions"; the thesis' future work, 4.3): the protocol trains the members
(one per repeat) on every probe's days before ``protocol.split_date`` and fits, per probe and member, on those
days only, ``ssm ~ a + b * climatology_doy + c * network`` (``protocol/calibration.py``). This module holds the
fitted pieces and applies them: the protocol and ``soilmoisture predict`` call the same
:meth:`SiteModel.predict`, so a registered known-site model reproduces the protocol's test predictions.

Stored as one folder (``site.json`` + ``members.npz``), logged with the registered model (MLflow pyfunc with
that folder as its artifact, ``protocol/known_site.py``). Pure numpy except :meth:`SiteModel.networks` (Keras).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soilmoisture.errors import DataError

SITE_JSON = "site.json"
MEMBERS_NPZ = "members.npz"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """ssm = coef . [1, (clim - mu0) / sd0, (pred - mu1) / sd1] (m3/m3), fitted on a probe's training days."""

    coef: np.ndarray      # (3,) intercept, climatology and network weights
    mu: np.ndarray        # (2,) mean of [climatology, network] over the fitted days
    sd: np.ndarray        # (2,) their standard deviations (1 where constant)

    def apply(self, pred: np.ndarray, clim: np.ndarray) -> np.ndarray:
        """(T,) calibrated SSM (m3/m3) from the network's (T,) prediction and the probe's (T,) climatology."""
        X = np.column_stack([np.asarray(clim, np.float64), np.asarray(pred, np.float64)])
        Z = (X - self.mu) / self.sd
        return np.column_stack([np.ones(len(Z)), Z]) @ self.coef

    def to_dict(self) -> dict:
        return {"coef": [float(v) for v in self.coef], "mu": [float(v) for v in self.mu],
                "sd": [float(v) for v in self.sd]}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(np.asarray(d["coef"], np.float64), np.asarray(d["mu"], np.float64), np.asarray(d["sd"], np.float64))


def member_prediction(net_pred: np.ndarray, level: float, cal: Calibration | None, clim: np.ndarray) -> np.ndarray:
    """(T,) one member's prediction of one probe (m3/m3): network (+ level, anomaly target), then calibration."""
    p = np.asarray(net_pred, np.float64) + float(level)
    return p if cal is None else cal.apply(p, clim)


@dataclass(frozen=True)
class SiteProbe:
    """What the model knows of one probe: its climatology, its calibration per member, level and interval."""

    climatology: np.ndarray              # (366,) day-of-year climatology (m3/m3) from its training days
    calibrations: list[Calibration | None]   # per member; None = too few training days (network unchanged)
    level: float                         # added to the network's output (anomaly target), else 0
    bounds: tuple[float, float]          # interval: ensemble + [lo, hi] (m3/m3; NaN = none)
    train_start: str                     # first and last observed training day (YYYY-MM-DD)
    train_end: str
    n_train_days: int

    def clim(self, dates: pd.DatetimeIndex) -> np.ndarray:
        return self.climatology[np.asarray(dates.day_of_year) - 1]


@dataclass
class SiteModel:
    """The registered known-site model (see module docstring)."""

    features: list[str]
    mean: np.ndarray                     # (M, F) per-member normalisation (training probes, training days)
    std: np.ndarray                      # (M, F)
    weights: list[list[np.ndarray]]      # per member, in ``build_model(hp, F).get_weights()`` order
    hp: dict                             # params.yaml ``model`` the members were built with
    start: str                           # first day of the training series: inputs are read from here on
    fit_end: str                         # protocol.split_date: training days are before it
    probes: dict[str, SiteProbe]
    default_level: float = 0.0           # level of a probe the model does not know (anomaly target)
    interval: float = 0.9                # nominal coverage of the interval
    meta: dict = field(default_factory=dict)   # variant, feature options, data source, protocol run id ...
    _nets: list[Any] | None = field(default=None, repr=False)

    @property
    def n_members(self) -> int:
        return len(self.weights)

    def networks(self) -> list[Any]:
        """The members as Keras models (built once)."""
        if self._nets is None:
            from soilmoisture.config import Model
            from soilmoisture.model.keras_model import build_model

            hp = Model(**self.hp)
            nets = []
            for w in self.weights:
                net = build_model(hp, len(self.features))
                net.set_weights(w)
                nets.append(net)
            self._nets = nets
        return self._nets

    def network_predictions(self, x: np.ndarray) -> np.ndarray:
        """(M, N, T) float32 raw network outputs of every member for raw inputs ``x`` (N, T, F)."""
        from soilmoisture.model.interface import normalise
        from soilmoisture.model.keras_model import predict_normalised

        return np.stack([predict_normalised(net, normalise(x, self.mean[m], self.std[m]))
                         for m, net in enumerate(self.networks())])

    def predict(self, net_preds: np.ndarray, probe_ids: list[str], dates: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        """Ensemble prediction (N, T) from the members' network outputs (M, N, T), per probe.

        Returns ``ssm_pred`` (mean of the calibrated members), ``ssm_lower``/``ssm_upper`` (interval; NaN for a
        probe the model does not know), ``members`` (M, N, T) and ``calibrated`` (N,) bool. A probe the model does
        not know gets the uncalibrated members (level ``default_level``).
        """
        # The protocol's own ensemble and interval rules (pure functions), so both give the same numbers.
        from soilmoisture.protocol.ensemble import ensemble_mean, interval

        M, N, T = net_preds.shape
        members = np.empty((M, N, T), np.float64)
        lo, hi = np.full((N, T), np.nan), np.full((N, T), np.nan)
        known = np.array([p in self.probes for p in probe_ids], dtype=bool)
        for n, pid in enumerate(probe_ids):
            sp = self.probes.get(pid)
            clim = sp.clim(dates) if sp is not None else None
            for m in range(M):
                if sp is None:
                    members[m, n] = member_prediction(net_preds[m, n], self.default_level, None, None)
                else:
                    members[m, n] = member_prediction(net_preds[m, n], sp.level, sp.calibrations[m], clim)
        mean = np.stack([ensemble_mean(members[:, n]) for n in range(N)]) if N else np.zeros((0, T))
        for n, pid in enumerate(probe_ids):
            sp = self.probes.get(pid)
            if sp is not None:
                lo[n], hi[n] = interval(mean[n], sp.bounds)
        return {"ssm_pred": mean, "ssm_lower": lo, "ssm_upper": hi, "members": members, "calibrated": known}

    # --- storage --------------------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Write ``site.json`` and ``members.npz`` into ``folder`` (created; files written then renamed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"format_version": FORMAT_VERSION, "kind": "known_site", "features": list(self.features),
               "mean": self.mean.tolist(), "std": self.std.tolist(), "hp": self.hp, "start": self.start,
               "fit_end": self.fit_end, "default_level": float(self.default_level), "interval": float(self.interval),
               "meta": self.meta,
               "probes": {pid: {"climatology": [float(v) for v in sp.climatology],
                                "calibrations": [c.to_dict() if c is not None else None for c in sp.calibrations],
                                "level": float(sp.level), "bounds": [float(v) for v in sp.bounds],
                                "train_start": sp.train_start, "train_end": sp.train_end,
                                "n_train_days": int(sp.n_train_days)} for pid, sp in self.probes.items()}}
        arrays = {f"m{m}_w{i}": np.asarray(a) for m, w in enumerate(self.weights) for i, a in enumerate(w)}
        tmp_json, tmp_npz = folder / f".{SITE_JSON}.tmp", folder / f".{MEMBERS_NPZ}.tmp.npz"
        tmp_json.write_text(json.dumps(doc, allow_nan=True))
        np.savez(tmp_npz, **arrays)
        os.replace(tmp_npz, folder / MEMBERS_NPZ)
        os.replace(tmp_json, folder / SITE_JSON)
        return folder

    @classmethod
    def load(cls, folder: Path) -> "SiteModel":
        """Read a folder written by :meth:`save` (DataError naming a missing or malformed file)."""
        folder = Path(folder)
        f = folder / SITE_JSON
        if not f.is_file() or not (folder / MEMBERS_NPZ).is_file():
            raise DataError(folder, f"not a known-site model folder ({SITE_JSON} and {MEMBERS_NPZ} expected)")
        try:
            doc = json.loads(f.read_text())
            with np.load(folder / MEMBERS_NPZ) as z:
                M = len(doc["mean"])
                weights = []
                for m in range(M):
                    n = sum(1 for k in z.files if k.startswith(f"m{m}_w"))
                    weights.append([z[f"m{m}_w{i}"] for i in range(n)])
            probes = {pid: SiteProbe(np.asarray(p["climatology"], np.float64),
                                     [Calibration.from_dict(c) if c is not None else None for c in p["calibrations"]],
                                     float(p["level"]), (float(p["bounds"][0]), float(p["bounds"][1])),
                                     p["train_start"], p["train_end"], int(p["n_train_days"]))
                      for pid, p in doc["probes"].items()}
            return cls(list(doc["features"]), np.asarray(doc["mean"], np.float32), np.asarray(doc["std"], np.float32),
                       weights, dict(doc["hp"]), doc["start"], doc["fit_end"], probes,
                       float(doc.get("default_level", 0.0)), float(doc.get("interval", 0.9)), dict(doc.get("meta", {})))
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f, f"malformed known-site model: {e}") from None




FOLDS_JSON = "folds.json"
FOLDS_NPZ = "folds.npz"


@dataclass
class FoldModels:
    """The leave-one-probe-out fold models of an unseen-site protocol run, kept so that a later retraining round
    can score them on days that arrived after they were trained (``retrain/decide.py``)."""

    features: list[str]
    hp: dict
    start: str                           # first day of the series they were trained on
    options: dict                        # params.yaml ``features`` (derived inputs)
    folds: list[dict]                    # per model: repeat, test_probe, mean (F,), std (F,), level (m3/m3)
    weights: list[list[np.ndarray]]

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"format_version": FORMAT_VERSION, "features": self.features, "hp": self.hp, "start": self.start,
               "options": self.options, "folds": self.folds}
        np.savez(folder / FOLDS_NPZ, **{f"m{m}_w{i}": np.asarray(a) for m, w in enumerate(self.weights)
                                        for i, a in enumerate(w)})
        (folder / FOLDS_JSON).write_text(json.dumps(doc, allow_nan=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "FoldModels":
        folder = Path(folder)
        if not (folder / FOLDS_JSON).is_file():
            raise DataError(folder, f"no fold models ({FOLDS_JSON}) in this protocol run")
        doc = json.loads((folder / FOLDS_JSON).read_text())
        with np.load(folder / FOLDS_NPZ) as z:
            weights = [[z[f"m{m}_w{i}"] for i in range(sum(1 for k in z.files if k.startswith(f"m{m}_w")))]
                       for m in range(len(doc["folds"]))]
        return cls(doc["features"], doc["hp"], doc["start"], doc["options"], doc["folds"], weights)

    def predict(self, x: np.ndarray, probe_ids: list[str]) -> list[tuple[dict, np.ndarray]]:
        """(fold, (T,) prediction of its test probe in m3/m3) for every fold whose test probe is in ``probe_ids``."""
        from soilmoisture.config import Model
        from soilmoisture.model.interface import normalise
        from soilmoisture.model.keras_model import build_model, predict_normalised

        net = build_model(Model(**self.hp), len(self.features))
        pos = {p: i for i, p in enumerate(probe_ids)}
        out = []
        for fold, w in zip(self.folds, self.weights):
            i = pos.get(fold["test_probe"])
            if i is None:
                continue
            net.set_weights(w)
            xn = normalise(x[i:i + 1], np.asarray(fold["mean"], np.float32), np.asarray(fold["std"], np.float32))
            out.append((fold, member_prediction(predict_normalised(net, xn)[0], fold["level"], None, None)))
        return out


__all__ = ["Calibration", "FoldModels", "SiteModel", "SiteProbe", "member_prediction"]
