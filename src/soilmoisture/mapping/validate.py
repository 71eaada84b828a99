"""Maps validated against a truth raster (the simulated area): streaming sums per day and land cover
(bounded memory, one window at a time), metrics at the end. No file access."""
from __future__ import annotations

import numpy as np
import pandas as pd

_SUMS = ("n", "se", "sae", "sp", "so", "spp", "soo", "spo")


class Validation:
    """Per-day and per-land-cover accumulators of predicted vs true SSM over windows.

    By day: MAE, bias, RMSE, unbiased RMSE and spatial Pearson r over the day's pixels. By land cover: MAE and
    bias over pixel-days, the mean of per-pixel (temporal) unbiased RMSE, the mean daily spatial r.
    """

    def __init__(self, dates: pd.DatetimeIndex) -> None:
        self.dates = dates
        self.day = {k: np.zeros(len(dates)) for k in _SUMS}
        self.lc: dict[int, dict[str, np.ndarray]] = {}
        self.lc_px: dict[int, list[float]] = {}   # [n pixels, sum ubrmse, sum mae]
        self.cover = {"n": np.zeros(len(dates)), "inside": np.zeros(len(dates)), "width": np.zeros(len(dates))}

    @staticmethod
    def _add(acc: dict[str, np.ndarray], p: np.ndarray, o: np.ndarray) -> None:
        ok = np.isfinite(p) & np.isfinite(o)
        p0, o0 = np.where(ok, p, 0.0), np.where(ok, o, 0.0)
        e = p0 - o0
        for k, v in (("n", ok), ("se", e), ("sae", np.abs(e)), ("sp", p0), ("so", o0), ("spp", p0 * p0),
                     ("soo", o0 * o0), ("spo", p0 * o0)):
            acc[k] += v.sum(axis=1)

    def add(self, pred: np.ndarray, truth: np.ndarray, landcover: np.ndarray) -> None:
        """``pred``/``truth`` (D, N) m3/m3 of one window, ``landcover`` (N,) CORINE codes."""
        p, o = pred.astype(np.float64), truth.astype(np.float64)
        self._add(self.day, p, o)
        for code in np.unique(landcover):
            sel = landcover == code
            acc = self.lc.setdefault(int(code), {k: np.zeros(len(self.dates)) for k in _SUMS})
            self._add(acc, p[:, sel], o[:, sel])
            ok = np.isfinite(p[:, sel]) & np.isfinite(o[:, sel])
            n = ok.sum(axis=0)
            has = n >= 2
            if not has.any():
                continue
            e = np.where(ok, p[:, sel] - o[:, sel], 0.0)[:, has]
            m = e.sum(axis=0) / n[has]
            ub = np.sqrt((np.where(ok[:, has], e - m, 0.0) ** 2).sum(axis=0) / n[has])
            mae_px = np.abs(e).sum(axis=0) / n[has]
            px = self.lc_px.setdefault(int(code), [0.0, 0.0, 0.0])
            px[0] += has.sum()
            px[1] += ub.sum()
            px[2] += mae_px.sum()

    def add_interval(self, lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> None:
        """Count the truth's pixel-days inside [``lower``, ``upper``] (D, N), m3/m3 (the interval's coverage)."""
        lo, hi, o = (np.asarray(a, np.float64) for a in (lower, upper, truth))
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(o)
        self.cover["n"] += ok.sum(axis=1)
        self.cover["inside"] += (ok & (o >= lo) & (o <= hi)).sum(axis=1)
        self.cover["width"] += np.where(ok, hi - lo, 0.0).sum(axis=1)

    @staticmethod
    def _metrics(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = a["n"]
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = np.where(n > 0, n, np.nan)
            bias = a["se"] / nn
            mae = a["sae"] / nn
            mp, mo = a["sp"] / nn, a["so"] / nn
            vp, vo = a["spp"] / nn - mp ** 2, a["soo"] / nn - mo ** 2
            cov = a["spo"] / nn - mp * mo
            mse = (a["spp"] - 2 * a["spo"] + a["soo"]) / nn
            ub = np.sqrt(np.maximum(mse - bias ** 2, 0.0))
            r = np.where((n >= 3) & (vp > 1e-12) & (vo > 1e-12), cov / np.sqrt(np.maximum(vp * vo, 1e-30)), np.nan)
        return {"n_pixels": n, "mae": mae, "bias": bias, "rmse": np.sqrt(mse), "ubrmse": ub, "spatial_r": r}

    def by_day(self) -> pd.DataFrame:
        return pd.DataFrame({"date": self.dates, **self._metrics(self.day)})

    def by_landcover(self) -> pd.DataFrame:
        from soilmoisture.schema import CORINE

        rows = []
        for code, acc in sorted(self.lc.items()):
            m = self._metrics(acc)
            n = acc["n"].sum()
            px = self.lc_px.get(code, [0.0, 0.0, 0.0])
            rows.append({"landcover_code": code, "landcover_name": CORINE.get(code, "unknown"),
                         "n_pixel_days": int(n), "n_pixels": int(px[0]),
                         "mae": acc["sae"].sum() / n if n else np.nan, "bias": acc["se"].sum() / n if n else np.nan,
                         "ubrmse_temporal": px[1] / px[0] if px[0] else np.nan,
                         "mae_per_pixel": px[2] / px[0] if px[0] else np.nan,
                         "spatial_r": float(np.nanmean(m["spatial_r"])) if np.isfinite(m["spatial_r"]).any() else np.nan})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, float]:
        a = {k: np.array([v.sum()]) for k, v in self.day.items()}
        m = {k: float(v[0]) for k, v in self._metrics(a).items() if k != "spatial_r"}
        d = self._metrics(self.day)
        m["spatial_r_mean"] = float(np.nanmean(d["spatial_r"])) if np.isfinite(d["spatial_r"]).any() else float("nan")
        m["ubrmse_spatial_mean"] = float(np.nanmean(d["ubrmse"])) if np.isfinite(d["ubrmse"]).any() else float("nan")
        px = [v for v in self.lc_px.values()]
        n_px = sum(v[0] for v in px)
        m["ubrmse_temporal_mean"] = sum(v[1] for v in px) / n_px if n_px else float("nan")
        m["mae_per_pixel_mean"] = sum(v[2] for v in px) / n_px if n_px else float("nan")
        m["n_pixel_days"] = m.pop("n_pixels")
        n = self.cover["n"].sum()
        if n:   # only when the map has interval layers
            m["interval_coverage"] = float(self.cover["inside"].sum() / n)
            m["interval_width_mean"] = float(self.cover["width"].sum() / n)
        return m


__all__ = ["Validation"]
