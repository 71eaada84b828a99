"""Parameters: ``params.yaml`` parsed once into small frozen dataclasses.

An unknown key, a missing key or a bad value stops the run *before any work* with a
:class:`~soilmoisture.errors.ConfigError` naming the dotted key and what is allowed
(the way NeuralHydrology's config fails early). Nothing else in the package opens
``params.yaml``: values arrive as arguments.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from soilmoisture.errors import ConfigError

REGIONS = ("denmark", "finland", "spain", "sweden")


def _date(key: str, value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(key, f"{value!r} is not a date (use YYYY-MM-DD)") from None


@dataclass(frozen=True)
class Paths:
    raw: Path
    truth: Path
    interim: Path
    processed: Path
    work: Path
    reports: Path
    maps: Path
    landing: Path


@dataclass(frozen=True)
class Data:
    source: Literal["simulated", "remedhus", "ismn"]
    remedhus_csv: Path | None
    ismn_archive: Path | None
    start: str
    end: str

    def _check(self, key: str) -> None:
        if _date(f"{key}.start", self.start) >= _date(f"{key}.end", self.end):
            raise ConfigError(f"{key}.end", f"must be after start ({self.start})")
        if self.source == "remedhus" and self.remedhus_csv is None:
            raise ConfigError(f"{key}.remedhus_csv", "is required when data.source is 'remedhus'")
        if self.source == "ismn" and self.ismn_archive is None:
            raise ConfigError(f"{key}.ismn_archive", "is required when data.source is 'ismn'")

    @property
    def dates(self):  # noqa: ANN201 - pandas imported lazily
        import pandas as pd

        return pd.date_range(self.start, self.end, freq="D")


@dataclass(frozen=True)
class Simulate:
    seed: int
    size: Literal["default", "bench"]
    start: str
    end: str
    probes_per_region: dict[str, int]
    tile_px: dict[str, int]
    pixel_m: float
    # days simulated past `end` whose S1/S2 scenes are held back for `soilmoisture deliver` (docs/retrain.md)
    hold_back_days: int = 0
    # edge (px) of the patch simulated around every probe outside the mapping tile (docs/simulation.md)
    patch_px: int = 32

    def _check(self, key: str) -> None:
        if _date(f"{key}.start", self.start) >= _date(f"{key}.end", self.end):
            raise ConfigError(f"{key}.end", f"must be after start ({self.start})")
        _range(f"{key}.hold_back_days", self.hold_back_days, 0, 3650)
        for region, n in self.probes_per_region.items():
            if region not in REGIONS:
                raise ConfigError(f"{key}.probes_per_region.{region}", f"unknown region; allowed: {', '.join(REGIONS)}")
            if not isinstance(n, int) or n < 0 or n > 500:
                raise ConfigError(f"{key}.probes_per_region.{region}", f"must be an integer in [0, 500], got {n!r}")
        if sum(self.probes_per_region.values()) < 2:
            raise ConfigError(f"{key}.probes_per_region", "at least 2 probes in total are needed")
        for size in ("default", "bench"):
            px = self.tile_px.get(size)
            if not isinstance(px, int) or not 8 <= px <= 5000:
                raise ConfigError(f"{key}.tile_px.{size}", f"must be an integer in [8, 5000], got {px!r}")
        if not 1.0 <= self.pixel_m <= 1000.0:
            raise ConfigError(f"{key}.pixel_m", f"must be in [1, 1000] metres, got {self.pixel_m}")
        if self.patch_px not in (16, 32, 64):
            raise ConfigError(f"{key}.patch_px", f"must be 16, 32 or 64 (a divisor of the 64 px block of clipped "
                                                 f"scenes), got {self.patch_px!r}")

    @property
    def tile(self) -> int:
        return self.tile_px[self.size]


@dataclass(frozen=True)
class Ingest:
    ssm_max_depth_m: float
    ismn_quality_flags: list[str]
    sigma0_zscore: float
    sigma0_max: float
    s2_mask_probability: float
    vi_max_gap_days: int
    dry_day_mm: float
    sigma0_units: Literal["linear", "db"]

    def _check(self, key: str) -> None:
        _range(f"{key}.ssm_max_depth_m", self.ssm_max_depth_m, 0.0, 1.0, low_open=True)
        _range(f"{key}.sigma0_zscore", self.sigma0_zscore, 0.0, 10.0, low_open=True)
        _range(f"{key}.sigma0_max", self.sigma0_max, 0.0, 10.0, low_open=True)
        _range(f"{key}.s2_mask_probability", self.s2_mask_probability, 0.0, 100.0)
        _range(f"{key}.vi_max_gap_days", self.vi_max_gap_days, 0, 365)
        _range(f"{key}.dry_day_mm", self.dry_day_mm, 0.0, 100.0)
        if not self.ismn_quality_flags:
            raise ConfigError(f"{key}.ismn_quality_flags", "must list at least one flag, e.g. ['G']")


@dataclass(frozen=True)
class Quality:
    ssm_flag_threshold: float
    ssm_flag_mostly: float
    drop_flagged_ssm: bool
    ecv_sm_max: float

    def _check(self, key: str) -> None:
        _range(f"{key}.ssm_flag_threshold", self.ssm_flag_threshold, 0.0, 1.0, low_open=True)
        _range(f"{key}.ssm_flag_mostly", self.ssm_flag_mostly, 0.0, 1.0)
        _range(f"{key}.ecv_sm_max", self.ecv_sm_max, 0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class Model:
    cell: Literal["lstm", "gru", "simplernn", "conv1d"]
    layers: int
    units: int
    dropout: float
    recurrent_l2: float
    loss: Literal["mae"]
    adam_beta_1: float
    adam_beta_2: float
    adam_epsilon: float
    clr_base_lr: float
    clr_max_lr: float
    clr_step_size: int
    epochs: int
    batch_size: int
    target_fill: Literal["mask", "zero"]
    # true: the train stage replaces the keys above with the tuning result (tune.best_params_path)
    from_tuning: bool = False

    def _check(self, key: str) -> None:
        _range(f"{key}.layers", self.layers, 1, 5)
        _range(f"{key}.units", self.units, 1, 512)
        _range(f"{key}.dropout", self.dropout, 0.0, 0.9)
        _range(f"{key}.recurrent_l2", self.recurrent_l2, 0.0, 1.0)
        _range(f"{key}.adam_beta_1", self.adam_beta_1, 0.0, 1.0, high_open=True)
        _range(f"{key}.adam_beta_2", self.adam_beta_2, 0.0, 1.0, high_open=True)
        _range(f"{key}.adam_epsilon", self.adam_epsilon, 0.0, 1.0, low_open=True)
        _range(f"{key}.clr_base_lr", self.clr_base_lr, 0.0, 1.0, low_open=True)
        _range(f"{key}.clr_max_lr", self.clr_max_lr, self.clr_base_lr, 1.0)
        _range(f"{key}.clr_step_size", self.clr_step_size, 1, 10**7)
        _range(f"{key}.epochs", self.epochs, 1, 10_000)
        _range(f"{key}.batch_size", self.batch_size, 1, 10_000)


@dataclass(frozen=True)
class VariantSpec:
    features: list[str]
    landcover: list[int] | None

    def _check(self, key: str) -> None:
        from soilmoisture.features import DERIVED, GROUPS, expand
        from soilmoisture.schema import FEATURES

        if not self.features:
            raise ConfigError(f"{key}.features", "must list at least one feature")
        for name in self.features:
            if name not in FEATURES and name not in DERIVED and name not in GROUPS:
                raise ConfigError(f"{key}.features", f"unknown feature {name!r}; allowed: {', '.join(FEATURES)}, "
                                                     f"the derived features of docs/data.md ({', '.join(list(DERIVED)[:12])}, "
                                                     f"lc_<CORINE code>) and the groups {', '.join(GROUPS)}")
        full = expand(self.features)
        if len(set(full)) != len(full):
            raise ConfigError(f"{key}.features", "lists a feature twice (a group such as landcover_onehot included)")


@dataclass(frozen=True)
class Variant:
    name: str


@dataclass(frozen=True)
class Features:
    """How derived model inputs are computed (src/soilmoisture/features.py, docs/data.md)."""

    reference_angle_deg: float        # sigma0 normalised to this incidence angle (deg)
    angle_slope_db_per_deg: float     # default slope where a series' own cannot be fitted (dB/deg)
    cdi_percentiles: list[float]      # [dry, wet] percentiles of the change-detection index references
    s1_age_cap_days: float            # s1_age_days is capped here

    def _check(self, key: str) -> None:
        _range(f"{key}.reference_angle_deg", self.reference_angle_deg, 0.0, 90.0)
        _range(f"{key}.angle_slope_db_per_deg", self.angle_slope_db_per_deg, -2.0, 2.0)
        p = self.cdi_percentiles
        if len(p) != 2 or not 0.0 <= p[0] < p[1] <= 100.0:
            raise ConfigError(f"{key}.cdi_percentiles", f"must be [dry, wet] with 0 <= dry < wet <= 100, got {p!r}")
        _range(f"{key}.s1_age_cap_days", self.s1_age_cap_days, 1.0, 3650.0)

    @property
    def options(self):  # noqa: ANN201 - features imported lazily
        from soilmoisture.features import FeatureOptions

        return FeatureOptions(self.reference_angle_deg, self.angle_slope_db_per_deg,
                              (float(self.cdi_percentiles[0]), float(self.cdi_percentiles[1])), self.s1_age_cap_days)


@dataclass(frozen=True)
class Protocol:
    mode: Literal["unseen_site", "known_site"]
    repeats: int
    val_fraction: float
    seed: int
    engine: Literal["native", "jax", "keras"]
    split_date: str
    site_calibration: bool
    max_probes: int | None
    interval: float = 0.9         # nominal coverage of the ensemble interval (protocol/ensemble.py)
    target: Literal["absolute", "anomaly"] = "absolute"   # anomaly: network learns ssm - level (protocol/level.py)
    level_features: list[str] = field(default_factory=list)   # static inputs of the level model (anomaly target)
    level_ridge: float = 1.0      # ridge penalty of the level model (per training probe, standardised inputs)
    method: Literal["satellite", "network"] = "satellite"   # network: + the other probes' readings (protocol/network.py)
    network_w: float | Literal["auto"] = "auto"     # share of the dynamics from the network (auto: per fold, validation)
    network_lam: float | Literal["auto"] = "auto"   # share of the level from the satellite model (auto: as above)
    network_flat_days: int = 7    # a pool probe's run of this many equal readings is removed (flatline)
    network_jump_k: float = 6.0   # ... and readings departing from the network by > k robust SDs (jumps)

    def _check(self, key: str) -> None:
        _range(f"{key}.repeats", self.repeats, 1, 1000)
        for name in ("network_w", "network_lam"):
            v = getattr(self, name)
            if v != "auto":
                _range(f"{key}.{name}", v, 0.0, 1.0)
        _range(f"{key}.network_flat_days", self.network_flat_days, 2, 10_000)
        _range(f"{key}.network_jump_k", self.network_jump_k, 0.5, 1.0e6)
        if self.method == "network" and self.mode != "unseen_site":
            raise ConfigError(f"{key}.method", "'network' is implemented for protocol.mode unseen_site only "
                                               "(known_site uses the probe's own past: site_calibration)")
        _range(f"{key}.interval", self.interval, 0.0, 1.0, low_open=True, high_open=True)
        _range(f"{key}.level_ridge", self.level_ridge, 0.0, 1.0e6)
        from soilmoisture.features import DERIVED, is_static
        from soilmoisture.schema import STATIC_FEATURES

        for name in self.level_features:
            if name not in STATIC_FEATURES and not is_static(name):
                static = list(STATIC_FEATURES) + [f for f in DERIVED if is_static(f) and not f.startswith("lc_")]
                raise ConfigError(f"{key}.level_features", f"{name!r} is not a static (per-probe) input; allowed: "
                                                           f"{', '.join(static)}, lc_<CORINE code>")
        _range(f"{key}.val_fraction", self.val_fraction, 0.0, 0.9)
        _date(f"{key}.split_date", self.split_date)
        if self.max_probes is not None:
            _range(f"{key}.max_probes", self.max_probes, 1, 100_000)


@dataclass(frozen=True)
class Tracking:
    uri: str
    artifact_root: Path
    registered_model_prefix: str


@dataclass(frozen=True)
class Evaluate:
    figures_probe: str | None


@dataclass(frozen=True)
class TuneSpace:
    """The hyperparameter search space (thesis 3.3.1: LSTM, GRU, SimpleRNN, 1-D convolutions were tried)."""

    cells: list[Literal["lstm", "gru", "simplernn", "conv1d"]]
    layers: list[int]             # [low, high], inclusive
    units: list[int]              # [low, high], sampled on a log scale
    dropout: list[float]          # [low, high]
    recurrent_l2: list[float]     # [low, high] > 0, log scale
    epochs_min: int               # epochs are drawn from [epochs_min, tune.max_epochs]
    clr_base_lr: list[float]      # [low, high] > 0, log scale
    clr_max_lr: list[float]       # [low, high] > 0, log scale; low must exceed clr_base_lr's high
    batch_sizes: list[int]        # choices (probe series per optimizer step)

    def _check(self, key: str) -> None:
        if not self.cells or len(set(self.cells)) != len(self.cells):
            raise ConfigError(f"{key}.cells", "must list at least one cell type, each once")
        for name, lo, hi, pos in (("layers", 1, 5, False), ("units", 1, 512, False), ("dropout", 0.0, 0.9, False),
                                  ("recurrent_l2", 0.0, 1.0, True), ("clr_base_lr", 0.0, 1.0, True),
                                  ("clr_max_lr", 0.0, 1.0, True)):
            bounds = getattr(self, name)
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ConfigError(f"{key}.{name}", f"must be [low, high] with low <= high, got {bounds!r}")
            for b in bounds:
                _range(f"{key}.{name}", b, lo, hi, low_open=pos)
        if self.clr_max_lr[0] <= self.clr_base_lr[1]:
            raise ConfigError(f"{key}.clr_max_lr", "low bound must exceed clr_base_lr's high bound (max > base)")
        _range(f"{key}.epochs_min", self.epochs_min, 1, 10_000)
        if not self.batch_sizes:
            raise ConfigError(f"{key}.batch_sizes", "must list at least one batch size")
        for b in self.batch_sizes:
            _range(f"{key}.batch_sizes", b, 1, 10_000)


@dataclass(frozen=True)
class TunePruner:
    startup_trials: int           # no pruning until this many trials have completed
    warmup_epochs: int            # no pruning within a trial's first epochs

    def _check(self, key: str) -> None:
        _range(f"{key}.startup_trials", self.startup_trials, 0, 100_000)
        _range(f"{key}.warmup_epochs", self.warmup_epochs, 0, 10_000)


@dataclass(frozen=True)
class Tune:
    n_trials: int
    storage: str
    study_name: str
    max_epochs: int
    folds_per_trial: int          # LOO folds (their validation probes only) scored per trial
    seed: int                     # sampler seed and the choice of folds
    heartbeat_seconds: int        # a worker's trial is declared dead after grace_seconds without a beat
    grace_seconds: int
    reports: Path                 # plots and summary.md
    best_params_path: Path        # the best trial's `model` keys (read by train when model.from_tuning)
    pruner: TunePruner
    space: TuneSpace

    def _check(self, key: str) -> None:
        _range(f"{key}.n_trials", self.n_trials, 1, 100_000)
        _range(f"{key}.max_epochs", self.max_epochs, 1, 10_000)
        _range(f"{key}.folds_per_trial", self.folds_per_trial, 1, 100_000)
        _range(f"{key}.heartbeat_seconds", self.heartbeat_seconds, 1, 3600)
        _range(f"{key}.grace_seconds", self.grace_seconds, self.heartbeat_seconds + 1, 86_400)
        if self.space.epochs_min > self.max_epochs:
            raise ConfigError(f"{key}.space.epochs_min", f"must not exceed tune.max_epochs ({self.max_epochs})")


MapFormat = Literal["cog-stack", "cog-daily", "netcdf", "zarr"]
MAP_FORMATS: tuple[str, ...] = get_args(MapFormat)   # mapping/formats.py writes each


@dataclass(frozen=True)
class Map:
    model: str | None
    alias: str
    region: str
    start: str
    end: str
    window_px: int
    bbox: list[float] | None = None   # [west, south, east, north] degrees WGS84; None = the region's whole tile
    format: MapFormat = "cog-stack"   # product format (docs/maps.md "Formats")
    interval: float | None = 0.9      # nominal coverage of the ssm_pLL/ssm_pHH layers; None = no interval layers
    stac: bool = True                 # write a STAC Item per map and the region's Collection
    method: Literal["satellite", "network"] = "satellite"   # network: + the region's probe readings (docs/maps.md)

    def _check(self, key: str) -> None:
        if self.interval is not None:
            _range(f"{key}.interval", self.interval, 0.0, 1.0, low_open=True, high_open=True)
        if self.bbox is not None and (len(self.bbox) != 4 or not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3])):
            raise ConfigError(f"{key}.bbox", f"{self.bbox!r} must be [west, south, east, north] (degrees) with west < east "
                                             "and south < north")
        if self.region not in REGIONS:
            raise ConfigError(f"{key}.region", f"unknown region {self.region!r}; allowed: {', '.join(REGIONS)}")
        if _date(f"{key}.start", self.start) > _date(f"{key}.end", self.end):
            raise ConfigError(f"{key}.end", f"must not be before start ({self.start})")
        _range(f"{key}.window_px", self.window_px, 8, 100_000)


@dataclass(frozen=True)
class Retrain:
    """Scheduled retraining with champion/challenger promotion (src/soilmoisture/retrain/, docs/retrain.md)."""

    cron: str                     # schedule of the served deployment (5 fields, UTC)
    margin_mae: float             # promote iff champion MAE - challenger MAE >= margin (m3/m3; < 0 favours fresh models)
    min_age_seconds: float        # a landing file unchanged for less than this is still being written
    variant: str | None           # the variant retrained and compared (None = variant.name)
    io_retries: int               # Prefect retries of the IO steps (never for bad data or a failed gate)
    io_retry_delay_seconds: float
    dvc_stages: list[str]         # stages `dvc commit -f` records after new data is accepted ([] = no DVC)
    deployment: str               # name of the served deployment (flow "retrain")

    def _check(self, key: str) -> None:
        if len(self.cron.split()) != 5:
            raise ConfigError(f"{key}.cron", f"{self.cron!r} is not a 5-field cron expression")
        import re

        # Prefect validates the full grammar when the deployment is built; this catches typos before any work.
        if not all(re.fullmatch(r"[0-9A-Za-z*/,\-?]+", f) for f in self.cron.split()):
            raise ConfigError(f"{key}.cron", f"{self.cron!r} is not a valid cron expression")
        _range(f"{key}.margin_mae", self.margin_mae, -1.0, 1.0)
        _range(f"{key}.min_age_seconds", self.min_age_seconds, 0.0, 7 * 86_400.0)
        _range(f"{key}.io_retries", self.io_retries, 0, 100)
        _range(f"{key}.io_retry_delay_seconds", self.io_retry_delay_seconds, 0.0, 3600.0)
        if not self.deployment.strip() or "/" in self.deployment:
            raise ConfigError(f"{key}.deployment", f"{self.deployment!r} must be a non-empty name without '/'")


@dataclass(frozen=True)
class Runner:
    kind: Literal["local", "dask_local", "dask_address"]
    address: str | None
    n_workers: int

    def _check(self, key: str) -> None:
        _range(f"{key}.n_workers", self.n_workers, 1, 1024)
        if self.kind == "dask_address" and not self.address:
            raise ConfigError(f"{key}.address", "is required when runner.kind is 'dask_address'")


@dataclass(frozen=True)
class AblateConfig:
    """One configuration of the ablation: a variant and dotted parameter overrides (methods)."""

    variant: str
    set: dict[str, Any]


@dataclass(frozen=True)
class Ablate:
    """``soilmoisture ablate`` (src/soilmoisture/protocol/ablate.py, README "Choosing inputs")."""

    modes: list[Literal["unseen_site", "known_site"]]
    repeats: int                  # protocol.repeats of every configuration (same folds and seeds for all)
    reference: str                # the current default: deltas and the paired Wilcoxon test against it
    known_site_val_days: int      # known site: configurations are chosen on the last N days before the split
    reports: Path
    configs: dict[str, AblateConfig]

    def _check(self, key: str) -> None:
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"{key}.modes", "must list unseen_site and/or known_site, each once")
        _range(f"{key}.repeats", self.repeats, 1, 1000)
        _range(f"{key}.known_site_val_days", self.known_site_val_days, 1, 3650)
        if not self.configs:
            raise ConfigError(f"{key}.configs", "must declare at least one configuration")
        if self.reference not in self.configs:
            raise ConfigError(f"{key}.reference", f"{self.reference!r} is not one of ablate.configs "
                                                  f"({', '.join(self.configs)})")


@dataclass(frozen=True)
class Params:
    paths: Paths
    data: Data
    simulate: Simulate
    ingest: Ingest
    quality: Quality
    model: Model
    variant: Variant
    variants: dict[str, VariantSpec]
    features: Features
    protocol: Protocol
    tracking: Tracking
    evaluate: Evaluate
    tune: Tune
    map: Map
    retrain: Retrain
    runner: Runner
    ablate: Ablate
    root: Path = field(default=Path("."), compare=False)

    def _check(self, key: str) -> None:
        if self.variant.name not in self.variants:
            raise ConfigError("variant.name", f"unknown variant {self.variant.name!r}; allowed: {', '.join(self.variants)}")
        for name, cfg in self.ablate.configs.items():
            if cfg.variant not in self.variants:
                raise ConfigError(f"ablate.configs.{name}.variant", f"unknown variant {cfg.variant!r}; allowed: "
                                                                    f"{', '.join(self.variants)}")
        if self.retrain.variant is not None and self.retrain.variant not in self.variants:
            raise ConfigError("retrain.variant", f"unknown variant {self.retrain.variant!r}; allowed: "
                                                 f"{', '.join(self.variants)}")

    @property
    def variant_spec(self) -> VariantSpec:
        return self.variants[self.variant.name]

    def path(self, p: Path | str) -> Path:
        """Resolve a configured path against the project root (the folder of params.yaml)."""
        p = Path(p)
        return p if p.is_absolute() else (self.root / p)

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (saved with every run)."""
        d = dataclasses.asdict(self)
        d.pop("root", None)
        return _plain(d)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _range(key: str, value: Any, lo: float, hi: float, low_open: bool = False, high_open: bool = False) -> None:
    ok = (value > lo if low_open else value >= lo) and (value < hi if high_open else value <= hi)
    if not ok:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ConfigError(key, f"{value!r} is out of range; allowed {lb}{lo}, {hi}{rb}")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (dataclasses, paths, literals)."""
    if tp is Any:  # free-form values (ablate.configs.<name>.set): checked when applied as overrides
        return value
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(key, "must not be empty (null)")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, a, value)
            except ConfigError as e:
                errors.append(e.problem)
        raise ConfigError(key, errors[0] if errors else f"bad value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"{value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        _, vt = get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", vt, v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {value!r}")
        (it,) = get_args(tp)
        return [_coerce(f"{key}[{i}]", it, v) for i, v in enumerate(value)]
    if value is None:
        raise ConfigError(key, "must not be empty (null)")
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a path string, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dt.date,)):
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # programming error, not user error


def _build(cls: type, mapping: Any, prefix: str) -> Any:
    if not isinstance(mapping, dict):
        raise ConfigError(prefix or "<root>", f"must be a mapping, got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name != "root"]
    names = {f.name for f in fields}
    for k in mapping:
        if k not in names:
            raise ConfigError(f"{prefix}.{k}" if prefix else str(k), f"unknown key; allowed here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in fields:
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in mapping:
            raise ConfigError(key, "is missing")
        kwargs[f.name] = _coerce(key, hints[f.name], mapping[f.name])
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        check(prefix or "<root>")
    return obj


def from_dict(raw: dict[str, Any], root: Path | str = ".") -> Params:
    """Build :class:`Params` from a mapping (as loaded from YAML); raises ConfigError on any problem."""
    params = _build(Params, raw, "")
    return dataclasses.replace(params, root=Path(root))


def load(path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read ``params.yaml`` once; ``overrides`` maps dotted keys to values (e.g. from the CLI)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"is not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value)
    return from_dict(raw, root=path.resolve().parent)


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping; the key must already exist (typos fail loudly)."""
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(".".join(parts[: i + 1]), "unknown key (in override)")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(dotted, "unknown key (in override)")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(text, "override must look like key.sub=value")
    key, val = text.split("=", 1)
    return key.strip(), yaml.safe_load(val)
