"""Tests of zsl.metrics against straightforward NumPy reference implementations."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from zsl.metrics import PerClassAccuracy, SeenUnseenStats, harmonic_mean

NUM_CLASSES = 12
SEEN = np.array([c <= 6 for c in range(NUM_CLASSES)])  # 0..6 seen, 7..11 unseen
UNIVERSE = np.array([c != 11 for c in range(NUM_CLASSES)])  # class 11 takes no part
EMPTY_CLASSES = (5, 9)  # one seen and one unseen class without samples

_trapz = np.trapezoid if hasattr(np, "trapezoid") else np.trapz  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- data


def make_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 scores [n, C] and imbalanced targets within the universe."""
    rng = np.random.default_rng(seed)
    classes = [c for c in range(NUM_CLASSES) if UNIVERSE[c] and c not in EMPTY_CLASSES]
    probs = rng.uniform(0.2, 1.0, len(classes)) ** 3
    target = rng.choice(classes, size=n, p=probs / probs.sum())
    scores = rng.normal(size=(n, NUM_CLASSES))
    scores[np.arange(n), target] += 1.5  # informative scores
    scores[:, SEEN] += 0.7  # bias towards seen classes: calibration matters
    scores[:, 11] += 10.0  # outside the universe: must never be predicted
    return scores.astype(np.float32), target.astype(np.int64)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_data()


def make_stats(scores: np.ndarray, target: np.ndarray, batch: int = 64) -> SeenUnseenStats:
    metric = SeenUnseenStats(torch.from_numpy(SEEN), universe_mask=torch.from_numpy(UNIVERSE))
    for i in range(0, len(target), batch):
        metric.update(
            torch.from_numpy(scores[i : i + batch]), torch.from_numpy(target[i : i + batch])
        )
    return metric


@pytest.fixture(scope="module")
def stats(data: tuple[np.ndarray, np.ndarray]) -> SeenUnseenStats:
    return make_stats(*data)


# ----------------------------------------------------------------------------- references


def ref_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    acc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        idx = target == c
        if idx.any():
            acc[c] = np.mean(pred[idx] == c)
    return acc


def ref_mean_acc(pred: np.ndarray, target: np.ndarray, classes: np.ndarray) -> float:
    accs = [np.mean(pred[target == c] == c) for c in classes if np.any(target == c)]
    return 100.0 * float(np.mean(accs))


def ref_predict(scores: np.ndarray, allowed: np.ndarray, gamma: float = 0.0) -> np.ndarray:
    s = scores.astype(np.float64)
    s = s - gamma * SEEN[None, :]
    s[:, ~allowed] = -np.inf
    return s.argmax(axis=1)


def ref_gzsl(scores: np.ndarray, target: np.ndarray, gamma: float) -> tuple[float, float, float]:
    pred = ref_predict(scores, UNIVERSE, gamma)
    unseen_classes = np.flatnonzero(UNIVERSE & ~SEEN)
    seen_classes = np.flatnonzero(UNIVERSE & SEEN)
    is_unseen = ~SEEN[target]
    u = ref_mean_acc(pred[is_unseen], target[is_unseen], unseen_classes)
    s = ref_mean_acc(pred[~is_unseen], target[~is_unseen], seen_classes)
    h = 0.0 if u + s == 0 else 2 * u * s / (u + s)
    return u, s, h


def ref_deltas(scores: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    return s[:, UNIVERSE & SEEN].max(axis=1) - s[:, UNIVERSE & ~SEEN].max(axis=1)


def ref_grid(scores: np.ndarray, n_grid: int = 2001) -> np.ndarray:
    """Fine gamma grid plus a point strictly inside every step of the curve."""
    d = np.unique(ref_deltas(scores))
    mids = (d[:-1] + d[1:]) / 2
    grid = np.linspace(d[0] - 1.0, d[-1] + 1.0, n_grid)
    return np.unique(np.concatenate([grid, mids]))


@pytest.fixture(scope="module")
def brute_force(data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(gammas, [u, s, h] per gamma) from the reference GZSL on a fine grid."""
    scores, target = data
    gammas = ref_grid(scores)
    ush = np.array([ref_gzsl(scores, target, g) for g in gammas])
    return gammas, ush


# ----------------------------------------------------------------------------- PerClassAccuracy


def test_per_class_accuracy_matches_reference(data: tuple[np.ndarray, np.ndarray]) -> None:
    scores, target = data
    pred = scores.argmax(axis=1)
    metric = PerClassAccuracy(NUM_CLASSES)
    for i in range(0, len(target), 50):
        metric.update(torch.from_numpy(pred[i : i + 50]), torch.from_numpy(target[i : i + 50]))
    acc = metric.compute()
    expected = ref_per_class(pred, target, NUM_CLASSES)
    assert acc.shape == (NUM_CLASSES,)
    assert acc.is_floating_point()
    np.testing.assert_array_equal(np.isnan(acc.numpy()), np.isnan(expected))
    np.testing.assert_allclose(acc.numpy(), expected, rtol=1e-6, equal_nan=True)
    for c in (*EMPTY_CLASSES, 11):
        assert math.isnan(float(acc[c]))

    subset = torch.tensor([0, 1, 5, 9, 10])  # 5 and 9 have no targets: excluded, not zeros
    exp = np.nanmean(expected[[0, 1, 10]])
    assert float(metric.mean_over(subset)) == pytest.approx(exp, rel=1e-6)
    assert float(metric.mean_over(torch.tensor([0, 0, 1, 5, 9, 10]))) == pytest.approx(
        exp, rel=1e-6
    )
    mask = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    mask[[0, 1, 5, 9, 10]] = True
    assert float(metric.mean_over(mask)) == pytest.approx(exp, rel=1e-6)
    with pytest.raises(ValueError, match="none of the given classes"):
        metric.mean_over(torch.tensor([5, 9, 11]))


def test_per_class_accuracy_errors() -> None:
    metric = PerClassAccuracy(4)
    with pytest.raises(ValueError, match="same length"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="out of range"):
        metric.update(torch.tensor([0, 4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        metric.update(torch.tensor([0, 1]), torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match="1-D"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        metric.mean_over(torch.tensor([7]))
    with pytest.raises(ValueError):
        PerClassAccuracy(0)


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(20.0, 80.0) == pytest.approx(32.0)
    assert harmonic_mean(0.0, 80.0) == 0.0


# ----------------------------------------------------------------------------- ZSL / GZSL


def test_zsl_accuracy(stats: SeenUnseenStats, data: tuple[np.ndarray, np.ndarray]) -> None:
    scores, target = data
    unseen_classes = np.flatnonzero(UNIVERSE & ~SEEN)
    is_unseen = ~SEEN[target]
    pred = ref_predict(scores[is_unseen], UNIVERSE & ~SEEN)
    expected = ref_mean_acc(pred, target[is_unseen], unseen_classes)
    assert stats.zsl_accuracy() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("gamma", [-1e6, -3.0, -0.5, 0.0, 0.3, 0.7, 1.1, 2.5, 1e6])
def test_gzsl_matches_reference(
    stats: SeenUnseenStats, data: tuple[np.ndarray, np.ndarray], gamma: float
) -> None:
    expected = ref_gzsl(*data, gamma)
    assert stats.gzsl(gamma) == pytest.approx(expected, abs=1e-9)


def test_gzsl_extremes(stats: SeenUnseenStats) -> None:
    u, s, h = stats.gzsl(-1e6)
    assert u == 0.0 and h == 0.0 and s > 0
    u, s, h = stats.gzsl(1e6)
    assert s == 0.0 and h == 0.0
    assert u == pytest.approx(stats.zsl_accuracy(), abs=1e-9)


def test_compute_dict(stats: SeenUnseenStats) -> None:
    out = stats.compute()
    assert set(out) == {"zsl", "u", "s", "h", "ausuc"}
    u, s, h = stats.gzsl(0.0)
    assert float(out["u"]) == pytest.approx(u)
    assert float(out["s"]) == pytest.approx(s)
    assert float(out["h"]) == pytest.approx(h)
    assert float(out["zsl"]) == pytest.approx(stats.zsl_accuracy())
    assert float(out["ausuc"]) == pytest.approx(stats.ausuc())


@pytest.mark.parametrize(("gamma", "choose"), [(None, True), (0.7, False), (None, False)])
def test_report_equals_the_helpers_exactly(
    stats: SeenUnseenStats, gamma: float | None, choose: bool
) -> None:
    """One summary and one curve give exactly what each helper computes on its own."""
    report = stats.report(gamma, choose)
    assert report.zsl == stats.zsl_accuracy() and report.gzsl == stats.gzsl(0.0)
    assert report.ausuc == stats.ausuc()
    expected_gamma = stats.best_gamma("h") if choose else gamma
    assert report.gamma == expected_gamma
    if expected_gamma is None:
        assert report.calibrated is None
    else:
        assert report.calibrated == stats.gzsl(expected_gamma)
    for mine, theirs in zip(report.curve, stats.curve(), strict=True):
        assert torch.equal(mine, theirs)


# ----------------------------------------------------------------------------- curve / AUSUC


def test_curve_points(
    stats: SeenUnseenStats,
    data: tuple[np.ndarray, np.ndarray],
    brute_force: tuple[np.ndarray, np.ndarray],
) -> None:
    scores, target = data
    gammas, u, s = stats.curve()
    n_distinct = len(np.unique(ref_deltas(scores)))
    assert gammas.shape == u.shape == s.shape == (n_distinct + 1,)
    assert torch.isfinite(gammas).all()
    assert bool((gammas[1:] > gammas[:-1]).all())
    assert bool((u[1:] >= u[:-1] - 1e-12).all()) and bool((s[1:] <= s[:-1] + 1e-12).all())
    assert float(u[0]) == 0.0 and float(s[-1]) == 0.0
    d = ref_deltas(scores)
    assert float(gammas[0]) == pytest.approx(d.min() - 1.0)
    assert float(gammas[-1]) == pytest.approx(d.max() + 1.0)
    # Every curve point is what gzsl and the reference give at its gamma (inside the step).
    for g, uk, sk in zip(gammas.tolist(), u.tolist(), s.tolist()):
        assert stats.gzsl(g)[:2] == pytest.approx((uk, sk), abs=1e-9)
        assert ref_gzsl(scores, target, g)[:2] == pytest.approx((uk, sk), abs=1e-9)
    # Every (u, s) reached on the fine grid is a curve point (no step is missing).
    grid_gammas, ush = brute_force
    idx = np.searchsorted(np.unique(d), grid_gammas, side="left")
    np.testing.assert_allclose(u.numpy()[idx], ush[:, 0], atol=1e-9)
    np.testing.assert_allclose(s.numpy()[idx], ush[:, 1], atol=1e-9)


def test_ausuc_matches_brute_force(
    stats: SeenUnseenStats, brute_force: tuple[np.ndarray, np.ndarray]
) -> None:
    _, ush = brute_force
    expected = 100.0 * _trapz(ush[:, 1] / 100.0, ush[:, 0] / 100.0)
    value = stats.ausuc()
    assert 0.0 < value < 100.0
    assert value == pytest.approx(expected, abs=1e-9)


def test_ausuc_perfect_classifier() -> None:
    seen = torch.tensor([True, True, False, False])
    target = torch.tensor([0, 1, 2, 3, 0, 2])
    scores = torch.full((6, 4), -5.0)
    scores[torch.arange(6), target] = 5.0
    metric = SeenUnseenStats(seen)
    metric.update(scores, target)
    assert metric.ausuc() == pytest.approx(100.0)
    assert metric.gzsl(0.0) == pytest.approx((100.0, 100.0, 100.0))
    assert metric.best_gamma() == 0.0


def test_best_gamma(stats: SeenUnseenStats, brute_force: tuple[np.ndarray, np.ndarray]) -> None:
    _, ush = brute_force
    g = stats.best_gamma("h")
    h = stats.gzsl(g)[2]
    assert h == pytest.approx(ush[:, 2].max(), abs=1e-9)
    assert h >= stats.gzsl(0.0)[2]
    with pytest.raises(ValueError, match="criterion"):
        stats.best_gamma("u")


def _two_class_stats(deltas: list[float]) -> SeenUnseenStats:
    """One seen (0) and one unseen (1) class, targets alternating unseen/seen."""
    metric = SeenUnseenStats(torch.tensor([True, False]))
    d = torch.tensor(deltas, dtype=torch.float32)
    scores = torch.stack([d, torch.zeros_like(d)], dim=1)
    target = torch.tensor([1, 0] * (len(deltas) // 2))
    metric.update(scores, target)
    return metric


def test_best_gamma_tie_break() -> None:
    # Steps: (-inf,1]: h=0; (1,2]: u=.5,s=1; (2,3]: .5,.5; (3,4]: u=1,s=.5; (4,inf): h=0.
    # H ties between (1,2] and (3,4]: the smaller |gamma| (midpoint 1.5) wins.
    metric = _two_class_stats([1.0, 2.0, 3.0, 4.0])
    assert metric.best_gamma() == pytest.approx(1.5)
    metric = _two_class_stats([-3.5, -2.5, -1.5, -0.5])
    assert metric.best_gamma() == pytest.approx(-1.0)
    # 0 lies in one of the tied steps: it wins.
    metric = _two_class_stats([-1.0, 2.0, 3.0, 4.0])
    assert metric.best_gamma() == 0.0
    gammas, u, s = metric.curve()
    np.testing.assert_allclose(gammas.numpy(), [-2.0, 0.5, 2.5, 3.5, 5.0])
    np.testing.assert_allclose(u.numpy(), [0, 50, 50, 100, 100])
    np.testing.assert_allclose(s.numpy(), [100, 100, 50, 50, 0])
    assert metric.ausuc() == pytest.approx(100.0 * (0.5 * 1.0 + 0.5 * 0.5))


def test_tied_deltas_single_step() -> None:
    metric = _two_class_stats([1.0, 1.0, 1.0, 1.0])
    gammas, u, s = metric.curve()
    np.testing.assert_allclose(gammas.numpy(), [0.0, 2.0])
    np.testing.assert_allclose(u.numpy(), [0, 100])
    np.testing.assert_allclose(s.numpy(), [100, 0])
    assert metric.ausuc() == pytest.approx(50.0)  # diagonal segment
    # at gamma == delta the sample is still predicted seen (strict inequality)
    assert metric.gzsl(1.0)[:2] == (0.0, 100.0)


# ----------------------------------------------------------------------------- errors


def test_seen_unseen_errors() -> None:
    seen = torch.tensor([True, True, False, False])
    metric = SeenUnseenStats(seen, universe_mask=torch.tensor([True, True, True, False]))
    good = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"shape \[B, 4\]"):
        metric.update(torch.zeros(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="batch size"):
        metric.update(good, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        metric.update(good, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="out of range"):
        metric.update(good, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="universe"):
        metric.update(good, torch.tensor([0, 1, 3]))
    bad = good.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        metric.update(bad, torch.tensor([0, 1, 2]))
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        metric.update(bad, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no samples"):
        metric.gzsl()
    with pytest.raises(ValueError, match="no unseen class"):
        SeenUnseenStats(seen, universe_mask=torch.tensor([True, True, False, False]))
    with pytest.raises(ValueError, match="no seen class"):
        SeenUnseenStats(seen, universe_mask=torch.tensor([False, False, True, True]))
    with pytest.raises(ValueError, match="no unseen class"):
        SeenUnseenStats(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="universe_mask"):
        SeenUnseenStats(seen, universe_mask=torch.ones(3, dtype=torch.bool))
    # only seen-target samples: ZSL / u undefined
    metric.update(good, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="unseen target"):
        metric.zsl_accuracy()
    with pytest.raises(ValueError, match="unseen target"):
        metric.gzsl()
    with pytest.raises(ValueError, match="unseen target"):
        metric.ausuc()
    out = metric.compute()
    # all-zero scores: ties go to the lowest seen id (0), so class 1 is always wrong
    assert math.isnan(float(out["u"])) and float(out["s"]) == pytest.approx(50.0)


def test_universe_excludes_classes() -> None:
    seen = torch.tensor([True, False, False])
    metric = SeenUnseenStats(seen, universe_mask=torch.tensor([True, True, False]))
    scores = torch.tensor([[0.0, 1.0, 9.0], [2.0, 1.0, 9.0]])
    metric.update(scores, torch.tensor([1, 0]))
    assert metric.gzsl(0.0) == pytest.approx((100.0, 100.0, 100.0))
    assert metric.zsl_accuracy() == pytest.approx(100.0)


# ----------------------------------------------------------------------------- DDP-style merging


def _results(m: SeenUnseenStats) -> list[float]:
    gammas, u, s = m.curve()
    out = [m.zsl_accuracy(), *m.gzsl(0.0), *m.gzsl(0.8), m.ausuc(), m.best_gamma()]
    return out + gammas.tolist() + u.tolist() + s.tolist()


def test_merge_state(data: tuple[np.ndarray, np.ndarray], stats: SeenUnseenStats) -> None:
    scores, target = data
    half = len(target) // 2
    m1 = make_stats(scores[:half], target[:half])
    m2 = make_stats(scores[half:], target[half:], batch=33)
    m1.merge_state(m2)
    assert _results(m1) == pytest.approx(_results(stats), abs=1e-9)

    pred = torch.from_numpy(scores.argmax(axis=1))
    tgt = torch.from_numpy(target)
    full, p1, p2 = (
        PerClassAccuracy(NUM_CLASSES),
        PerClassAccuracy(NUM_CLASSES),
        PerClassAccuracy(NUM_CLASSES),
    )
    full.update(pred, tgt)
    p1.update(pred[:half], tgt[:half])
    p2.update(pred[half:], tgt[half:])
    p1.merge_state(p2)
    torch.testing.assert_close(p1.compute(), full.compute(), equal_nan=True)


def _fake_gather(other: SeenUnseenStats) -> Callable[..., list[torch.Tensor]]:
    """A ``dist_sync_fn`` simulating a 2-process all_gather with ``other`` as rank 1."""
    queue = []
    for name, dtype in SeenUnseenStats._STATE_DTYPES.items():
        value = getattr(other, name)
        queue.append(torch.cat(value) if value else torch.empty(0, dtype=dtype))
    it = iter(queue)

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        remote = next(it)
        assert tensor.dtype == remote.dtype, "all_gather needs the same dtype on every rank"
        return [tensor, remote]

    return gather


@pytest.mark.parametrize("split", [0, 150])
def test_distributed_sync(
    data: tuple[np.ndarray, np.ndarray], stats: SeenUnseenStats, split: int
) -> None:
    """Sync through torchmetrics' machinery, including a rank that saw no data (split=0)."""
    scores, target = data
    rank0 = SeenUnseenStats(torch.from_numpy(SEEN), universe_mask=torch.from_numpy(UNIVERSE))
    if split:
        rank0.update(torch.from_numpy(scores[:split]), torch.from_numpy(target[:split]))
    rank1 = make_stats(scores[split:], target[split:])
    rank0.sync(dist_sync_fn=_fake_gather(rank1), distributed_available=lambda: True)
    assert _results(rank0) == pytest.approx(_results(stats), abs=1e-9)
    rank0.unsync()
    assert len(rank0.target) == (1 if split else 0)
