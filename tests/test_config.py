"""params.yaml is parsed once into typed dataclasses; bad keys fail before any work, naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from soilmoisture import config
from soilmoisture.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_load_with_thesis_defaults() -> None:
    p = config.load(ROOT / "params.yaml")
    assert p.model.units == 16 and p.model.layers == 2 and p.model.epochs == 20 and p.model.batch_size == 1
    assert p.model.clr_base_lr == pytest.approx(1e-6) and p.model.clr_max_lr == pytest.approx(2e-3)
    assert p.model.target_fill == "mask"
    assert sum(p.simulate.probes_per_region.values()) == 61
    assert len(p.data.dates) == 883
    assert p.variant_spec.features == p.variants["minimum"].features
    assert p.variants["agriculture"].landcover == [211, 212]


@pytest.mark.parametrize(
    "override, key, words",
    [
        ({"model.untis": 16}, "model.untis", "unknown key"),
        ({"model.dropout": 1.5}, "model.dropout", "out of range"),
        ({"model.cell": "transformer"}, "model.cell", "allowed: lstm, gru, simplernn, conv1d"),
        ({"variant.name": "maximum"}, "variant.name", "unknown variant"),
        ({"simulate.probes_per_region": {"atlantis": 3}}, "simulate.probes_per_region.atlantis", "unknown region"),
        ({"simulate.seed": "abc"}, "simulate.seed", "must be an integer"),
        ({"data.end": "2015-01-01"}, "data.end", "must be after start"),
        ({"variants.minimum.features": ["sigma0_vv", "soil_colour"]}, "variants.minimum.features", "soil_colour"),
        ({"protocol.repeats": 0}, "protocol.repeats", "out of range"),
        ({"retrain.cron": "daily"}, "retrain.cron", "cron"),
    ],
)
def test_bad_parameter_names_the_key(tmp_path: Path, override: dict, key: str, words: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in override.items():
        parts = k.split(".")
        node = raw
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = v
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert exc.value.key == key
    assert words in str(exc.value)


def test_missing_key_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["model"]["epochs"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="'model.epochs': is missing"):
        config.load(tmp_path / "params.yaml")


def test_override_of_unknown_key_fails() -> None:
    with pytest.raises(ConfigError, match="protocol.repeat"):
        config.load(ROOT / "params.yaml", {"protocol.repeat": 3})


def test_cli_reports_bad_parameter_in_one_line(tmp_path: Path, capsys) -> None:
    from soilmoisture.cli import main

    rc = main(["simulate", "--params", str(ROOT / "params.yaml"), "--set", "simulate.size=huge"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0
    assert "simulate.size" in err and "default, bench" in err


def test_relative_paths_resolve_against_params_folder(tmp_path: Path) -> None:
    p = config.load(ROOT / "params.yaml")
    assert p.path(p.paths.raw) == ROOT / "data" / "raw"
    assert p.to_dict()["paths"]["raw"] == "data/raw"
