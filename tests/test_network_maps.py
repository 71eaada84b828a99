"""Network-informed maps (map.method: network, mapping/network.py) on the tiny simulated area, through the CLI:
the map honours the probes' readings near them, its band is narrow near probes and wide far away, and the
errors against the truth are reported by distance to the nearest probe."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from test_mapping import END, REGION, START, mapped  # noqa: F401 - the module fixture (its own instance here)


def _read(path, layer: str | None = None) -> np.ndarray:
    import rasterio

    p = path if layer is None else path.with_name(path.name.replace("ssm_", f"{layer}_", 1))
    with rasterio.open(p) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def network_map(mapped):  # noqa: F811 - the imported fixture
    from soilmoisture import config, mapping
    from soilmoisture.cli import main

    root = mapped["root"]
    sat_path = mapping.output_path(mapped["params"])
    sat = _read(sat_path)
    assert main(["map", "--params", str(root / "params.yaml"), "--set", "map.method=network",
                 "--set", "paths.maps=data/maps_network"]) == 0
    params = config.load(root / "params.yaml", {"map.method": "network", "paths.maps": "data/maps_network"})
    return {"params": params, "path": mapping.output_path(params), "sat": sat, **mapped}


def _probe_pixels(params) -> list[dict]:
    manifest = json.loads((params.path(params.paths.raw) / "manifest.json").read_text())
    # the probes inside the mapping tile (the others sit in patches clipped to the network, docs/raw-layout.md)
    return [p for p in manifest["probes"] if p["region"] == REGION and p["area"] == "tile"]


def test_network_map_is_closer_to_the_probes_readings_than_the_satellite_map(network_map):
    net = _read(network_map["path"])
    sat = network_map["sat"]
    days = pd.date_range(START, END, freq="D")
    daily = network_map["daily"]
    err_net, err_sat = [], []
    for p in _probe_pixels(network_map["params"]):
        obs = daily.loc[daily["probe_id"] == p["probe_id"]].set_index("date")["ssm"].reindex(days).to_numpy()
        n, s = net[:, p["row"], p["col"]], sat[:, p["row"], p["col"]]
        ok = np.isfinite(obs) & np.isfinite(n) & np.isfinite(s)
        err_net += list(np.abs(n[ok] - obs[ok]))
        err_sat += list(np.abs(s[ok] - obs[ok]))
    assert len(err_net) >= 5                                 # the tile holds one probe: a week of its days
    assert np.mean(err_net) < np.mean(err_sat)
    assert (np.isfinite(net) == np.isfinite(sat)).all()      # nodata stays nodata, nothing new appears


def test_network_band_is_narrow_at_probes_and_wider_far_from_them(network_map):
    path = network_map["path"]
    lo, hi = _read(path, "ssm_p05"), _read(path, "ssm_p95")
    width = np.nanmean(hi - lo, axis=0)                      # (rows, cols) mean width over the days
    at_probes = [width[p["row"], p["col"]] for p in _probe_pixels(network_map["params"])]
    assert np.nanmean(at_probes) < np.nanpercentile(width, 75)
    assert np.nanmax(width) > np.nanmin(width)


def test_network_map_is_validated_by_distance_and_tracked(network_map):
    from mlflow.tracking import MlflowClient

    from soilmoisture import tracking

    params = network_map["params"]
    by_dist = pd.read_csv(network_map["path"].parent / "validation_by_distance.csv")
    assert {"distance_km", "n_pixel_days", "mae_network", "mae_satellite"} <= set(by_dist.columns)
    assert by_dist["n_pixel_days"].sum() > 0
    exp = tracking.ensure_experiment(params, "maps")
    client = MlflowClient(tracking.tracking_uri(params))
    (run,) = client.search_runs([exp], filter_string="params.method = 'network'")
    assert float(run.data.params["network_probes"]) > 0
    assert "network" in run.data.params["interval_method"]
    assert any(k.startswith("dist") and k.endswith("_mae_network") for k in run.data.metrics)


def test_network_map_refuses_a_region_without_probes(mapped, tmp_path):  # noqa: F811
    from soilmoisture import mapping
    from soilmoisture.errors import DataError
    from soilmoisture.mapping import network as mnet

    params = mapped["params"]
    empty = tmp_path / "processed"
    empty.mkdir()
    mapped["daily"].iloc[:0].to_parquet(empty / "daily.parquet")
    mapped["probes"].iloc[:0].to_parquet(empty / "probes.parquet")
    from soilmoisture import config

    p2 = config.load(mapped["root"] / "params.yaml", {"paths.processed": str(empty)})
    src = mapping.open_sources(p2.path(p2.paths.raw), REGION)
    try:
        with pytest.raises(DataError, match="no probes in region"):
            mnet.build(p2, src.grid, pd.date_range(START, END), 0, {}, 0.9)
    finally:
        src.close()
