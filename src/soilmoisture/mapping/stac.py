"""STAC metadata of the maps (pystac): one Item per produced map (per day for cog-daily) with its assets, WGS84
bbox and geometry, datetime range, the projection extension and the provenance, and one Collection per
region gathering every map written there, so a catalogue or a STAC browser can index them (docs/maps.md).

Layout under ``paths.maps/<region>/``: ``collection.json`` and ``stac/<item id>.json``; asset and link hrefs are
relative (the folder can be moved or uploaded as is). Items whose files were removed drop out of the collection.
JSON is written under a temporary name and renamed.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from soilmoisture.mapping.formats import (REASON_LAYER, REASONS, SSM_LAYER, Provenance, daily_file, layer_file)

log = logging.getLogger(__name__)

COLLECTION_FILE = "collection.json"
ITEMS_DIR = "stac"
PREFIX = "soilmoisture"          # namespace of the provenance properties (soilmoisture:model_name, ...)
MEDIA = {"cog-stack": "image/tiff; application=geotiff; profile=cloud-optimized",
         "cog-daily": "image/tiff; application=geotiff; profile=cloud-optimized",
         "netcdf": "application/netcdf", "zarr": "application/vnd+zarr"}


def collection_id(region: str) -> str:
    return f"{PREFIX}-ssm-{region}"


def _utc(day: pd.Timestamp, end_of_day: bool = False) -> datetime:
    d = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return d + timedelta(days=1, seconds=-1) if end_of_day else d


def _wgs84(bounds: tuple[float, float, float, float], crs: Any) -> tuple[list[float], dict]:
    from rasterio.warp import transform_bounds

    w, s, e, n = (float(v) for v in transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
    geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return [w, s, e, n], geom


def _layer_asset(layer: str, href: Path, media: str, prov: Provenance) -> Any:
    import pystac

    if layer == SSM_LAYER:
        title, roles = "surface soil moisture 0-5 cm (m3/m3)", ["data"]
    elif layer == REASON_LAYER:
        title = "nodata reason: " + ", ".join(f"{k} {v}" for k, v in REASONS.items())
        roles = ["data", "quality"]
    else:
        title, roles = f"{layer}: {prov.interval_coverage:.0%} prediction interval bound (m3/m3)", ["data", "uncertainty"]
    return pystac.Asset(href=str(href), media_type=media, title=title, roles=roles)


def make_items(res: Any, prov: Provenance) -> list[Any]:
    """The STAC Items of a :class:`soilmoisture.mapping.products.MapResult` (absolute hrefs, not yet saved)."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    bbox, geom = _wgs84(res.bounds, res.crs)
    props = {f"{PREFIX}:{k}": v for k, v in prov.as_dict().items()}
    props[f"{PREFIX}:format"] = res.fmt
    epsg = res.crs.to_epsg() if res.crs is not None else None

    def item(item_id: str, start: pd.Timestamp, end: pd.Timestamp) -> Any:
        it = pystac.Item(item_id, geom, bbox, None, {**props, "title": f"SSM {prov.region} {start:%Y-%m-%d}"
                         + ("" if start == end else f"..{end:%Y-%m-%d}") + f" ({res.fmt})"},
                         start_datetime=_utc(start), end_datetime=_utc(end, True), collection=collection_id(prov.region))
        proj = ProjectionExtension.ext(it, add_if_missing=True)
        proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else res.crs.to_wkt(),
                   shape=[int(res.shape[0]), int(res.shape[1])], transform=[float(v) for v in list(res.transform)[:6]],
                   bbox=[float(v) for v in res.bounds])
        return it

    d0, d1 = res.dates[0], res.dates[-1]
    looks = {p.stem.rsplit("_", 1)[-1]: p for p in res.quicklooks}
    items = []
    if res.fmt == "cog-daily":
        for d in res.dates:
            it = item(f"ssm-{prov.region}-{d:%Y%m%d}-cog-daily", d, d)
            for layer in res.layers:
                it.add_asset(layer, _layer_asset(layer, daily_file(res.path, layer, d), MEDIA[res.fmt], prov))
            if f"{d:%Y%m%d}" in looks:
                it.add_asset("quicklook", pystac.Asset(str(looks[f"{d:%Y%m%d}"]), media_type=pystac.MediaType.PNG,
                                                       title="quicklook: SSM and sigma0 VV", roles=["overview"]))
            items.append(it)
        return items
    it = item(f"ssm-{prov.region}-{d0:%Y%m%d}-{d1:%Y%m%d}-{res.fmt}", d0, d1)
    if res.fmt == "cog-stack":
        for layer in res.layers:
            a = _layer_asset(layer, layer_file(res.path, layer), MEDIA[res.fmt], prov)
            a.description = "one band per day, band descriptions YYYY-MM-DD"
            it.add_asset(layer, a)
    else:
        it.add_asset("data", pystac.Asset(str(res.path), media_type=MEDIA[res.fmt], roles=["data"],
                                          title=f"CF-1.8 dataset: {', '.join(res.layers)} over (time, y, x)"))
    for key, p in sorted(looks.items()):
        it.add_asset(f"quicklook_{key}", pystac.Asset(str(p), media_type=pystac.MediaType.PNG,
                                                      title="quicklook: SSM and sigma0 VV", roles=["overview"]))
    items.append(it)
    return items


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def _assets_exist(item: Any) -> bool:
    return all(Path(a.get_absolute_href() or "").exists() for a in item.assets.values())


def write_catalog(folder: Path, region: str, new_items: list[Any]) -> Path:
    """Add ``new_items`` to the region's Collection in ``folder`` (replacing items of the same id, dropping items
    whose files are gone) and write the collection and every item; returns the collection's path."""
    import pystac

    items_dir = folder / ITEMS_DIR
    keep: dict[str, Any] = {}
    for p in sorted(items_dir.glob("*.json")) if items_dir.is_dir() else []:
        try:
            old = pystac.Item.from_file(str(p))
        except Exception as e:  # a foreign or broken JSON file: leave it, say so
            log.warning("STAC item %s unreadable (%s): left out of the collection", p, e)
            continue
        if _assets_exist(old):
            keep[old.id] = old
        else:
            p.unlink()
    for it in new_items:
        keep[it.id] = it
    items = [keep[k] for k in sorted(keep)]
    bboxes = [it.bbox for it in items]
    union = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    t0 = min(it.common_metadata.start_datetime for it in items)
    t1 = max(it.common_metadata.end_datetime for it in items)
    coll = pystac.Collection(
        collection_id(region), f"Daily 10 m surface soil moisture (0-5 cm, m3/m3) of region {region}, predicted by "
        "the soilmoisture platform's LSTM from Sentinel-1/2, weather, terrain and land cover (docs/maps.md).",
        pystac.Extent(pystac.SpatialExtent([union]), pystac.TemporalExtent([[t0, t1]])),
        title=f"Soil moisture maps, {region}", license="other",
        keywords=["soil moisture", "Sentinel-1", "Sentinel-2", "LSTM"])
    coll.set_self_href(str(folder / COLLECTION_FILE))
    for it in items:
        coll.add_item(it)               # (pystac's layout would move the item to <id>/<id>.json: set it after)
    for it in items:
        it.make_asset_hrefs_absolute()
        it.set_self_href(str(items_dir / f"{it.id}.json"))
        it.make_asset_hrefs_relative()
    for it in items:
        _write_json(items_dir / f"{it.id}.json", it.to_dict(include_self_link=False, transform_hrefs=True))
    _write_json(folder / COLLECTION_FILE, coll.to_dict(include_self_link=False, transform_hrefs=True))
    return folder / COLLECTION_FILE


def validate_offline(doc: dict) -> None:
    """Validate a STAC Item/Collection dict against the core JSON schemas that pystac ships (no download);
    extension schemas (projection) are not shipped, so their fields are for the caller to check."""
    from pystac.validation.local_validator import get_local_schema_cache
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource

    cache = get_local_schema_cache()
    registry = Registry().with_resources([(uri, Resource.from_contents(s)) for uri, s in cache.items()])
    kind = "item" if doc.get("type") == "Feature" else "collection"
    uri = f"https://schemas.stacspec.org/v{doc['stac_version']}/{kind}-spec/json-schema/{kind}.json"
    Draft7Validator(cache[uri], registry=registry).validate(doc)


__all__ = ["COLLECTION_FILE", "ITEMS_DIR", "collection_id", "make_items", "validate_offline", "write_catalog"]
