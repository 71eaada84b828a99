"""Fold plans: which probes train, validate and are tested by each model (pure, no I/O).

Thesis 3.3.1: leave-one-probe-out; the remaining probes are split 80/20 at random into training and
validation probes, re-drawn for every repeat; the model is re-initialised for every fold. Normalisation
statistics come from the fold's *training* probes only, never from the test probe.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilmoisture.errors import ProtocolError

# Salts that keep the seeds of the three kinds of model apart.
_KIND_SALT = {"fold": 0, "known_site": 1, "final": 2}


@dataclass(frozen=True)
class FoldPlan:
    """One model to train: its probes (indices into the tensors' probe axis) and its seed."""

    kind: str                 # "fold" (unseen_site LOO) | "known_site" | "final"
    repeat: int
    seed: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray      # probes whose predictions are evaluated (LOO: exactly one)
    test_probe: str | None    # LOO: the held-out probe's id; otherwise None


def fold_seed(base_seed: int, test_index: int, repeat: int, kind: str = "fold") -> int:
    """A deterministic 31-bit seed from (protocol.seed, test probe index, repeat, kind)."""
    ss = np.random.SeedSequence([int(base_seed), int(test_index), int(repeat), _KIND_SALT[kind]])
    return int(ss.generate_state(1, dtype=np.uint32)[0] % (2**31 - 1))


def split_train_val(pool: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (1 - val_fraction) / val_fraction split of probe indices; at least one training probe."""
    pool = np.asarray(pool, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(pool)
    n_val = min(int(round(val_fraction * len(pool))), max(len(pool) - 1, 0))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _skip(probe: str, problem: str, variant: str) -> ProtocolError:
    """The report of a test probe that is skipped; ``.probe`` names it."""
    err = ProtocolError(f"variant {variant!r}: test probe {probe!r} {problem}; skipped")
    err.probe = probe  # type: ignore[attr-defined]
    return err


def plan_unseen_site(probe_ids: list[str], n_observed: np.ndarray, *, repeats: int, val_fraction: float,
                     seed: int, max_probes: int | None = None, variant: str = "?"
                     ) -> tuple[list[FoldPlan], list[ProtocolError]]:
    """Leave-one-probe-out plans, ``repeats`` per test probe.

    ``n_observed`` (P,) counts each probe's observed SSM days. A probe without any is reported (a
    ProtocolError in the second return value) and neither tested nor trained on. Raises ProtocolError
    naming the variant when fewer than two probes have observations (no training probe would be left).
    """
    n_observed = np.asarray(n_observed)
    usable = np.flatnonzero(n_observed > 0)
    skipped = [_skip(probe_ids[i], "has no observed SSM day", variant) for i in np.flatnonzero(n_observed <= 0)]
    if len(usable) < 2:
        raise ProtocolError(f"variant {variant!r} leaves no training probe: {len(usable)} probe(s) with observed "
                            f"SSM ({', '.join(probe_ids[i] for i in usable) or 'none'}); leave-one-probe-out needs 2")
    tests = usable if max_probes is None else usable[:max_probes]
    plans = []
    for t in tests:
        others = usable[usable != t]
        for r in range(repeats):
            s = fold_seed(seed, int(t), r)
            train, val = split_train_val(others, val_fraction, s)
            plans.append(FoldPlan("fold", r, s, train, val, np.array([t]), probe_ids[t]))
    return plans, skipped


def plan_known_site(probe_ids: list[str], n_before: np.ndarray, n_after: np.ndarray, *, repeats: int, seed: int,
                    max_probes: int | None = None, variant: str = "?"
                    ) -> tuple[list[FoldPlan], list[ProtocolError]]:
    """Known site, new period: one model per repeat trained on every probe's days before the split date.

    ``n_before``/``n_after`` (P,) count observed SSM days before / from the split date. The model is tested
    on every probe with days after the split; probes without any are reported and skipped. No validation
    probes: every probe's own past is training data, and its future must not be looked at.
    """
    n_before, n_after = np.asarray(n_before), np.asarray(n_after)
    train = np.flatnonzero(n_before > 0)
    if len(train) == 0:
        raise ProtocolError(f"variant {variant!r} leaves no training probe: no probe has observed SSM before the "
                            "split date (protocol.split_date)")
    tests = np.flatnonzero(n_after > 0)
    skipped = [_skip(probe_ids[i], "has no observed SSM day from the split date on", variant)
               for i in np.flatnonzero(n_after <= 0)]
    if len(tests) == 0:
        raise ProtocolError(f"variant {variant!r}: no probe has observed SSM from the split date on "
                            "(protocol.split_date): nothing to test")
    if max_probes is not None:
        tests = tests[:max_probes]
    plans = [FoldPlan("known_site", r, fold_seed(seed, 0, r, "known_site"), train, np.array([], dtype=np.int64),
                      tests, None) for r in range(repeats)]
    return plans, skipped


def plan_final(n_observed: np.ndarray, *, seed: int) -> FoldPlan:
    """The final model of a variant: trained on every probe with observations, no validation, nothing tested."""
    train = np.flatnonzero(np.asarray(n_observed) > 0)
    return FoldPlan("final", 0, fold_seed(seed, 0, 0, "final"), train, np.array([], dtype=np.int64),
                    np.array([], dtype=np.int64), None)


CONSTANT_STD = 1.0e30   # std given to a feature constant over the training probes (normalises to ~0)


def norm_stats(x: np.ndarray, idx: np.ndarray, day_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (F,) over the observed values of probes ``idx`` (on days ``day_mask``).

    A feature with no value gets mean 0 and std 1. A feature that is *constant* over the training probes
    gets std ``CONSTANT_STD``: it carries no information the model could learn, and a test probe with a
    different value (e.g. the only irrigated field, land cover 212 among 211s) must not turn into an input
    far outside anything seen in training; normalised, it is 0 like the training values.
    """
    sub = x[np.asarray(idx, dtype=np.int64)]
    if day_mask is not None:
        sub = sub[:, np.asarray(day_mask, dtype=bool)]
    flat = sub.reshape(-1, x.shape[-1]).astype(np.float64)
    cnt = np.isfinite(flat).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, np.nansum(flat, axis=0) / np.maximum(cnt, 1), 0.0)
        var = np.where(cnt > 0, np.nansum((flat - mean) ** 2, axis=0) / np.maximum(cnt, 1), 1.0)
    std = np.sqrt(var)
    std = np.where(cnt == 0, 1.0, np.where(np.isfinite(std) & (std > 0), std, CONSTANT_STD))
    return mean.astype(np.float32), std.astype(np.float32)
