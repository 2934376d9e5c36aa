"""The drift monitor: statistics, windows on a fake clock, and detection quality on known shifts."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kernels
from runtime.monitoring import drift
from runtime.monitoring import profile as profiles
from runtime.monitoring.drift import DriftMonitor, DriftSettings
from runtime.monitoring.metrics import DriftCollector
from runtime.monitoring.profile import ReferenceProfile

FEATURES = 20
CLASSES = 10


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def gaussian() -> ReferenceProfile:
    """20 standard-normal features from 20,000 rows; uniform predicted classes."""
    rng = np.random.default_rng(7)
    scores = np.eye(CLASSES)[np.arange(20_000) % CLASSES]
    return profiles.build(rng.normal(size=(20_000, FEATURES)), "x", scores, "y")


def monitor(profile: ReferenceProfile, clock: Clock | None = None, **settings: Any) -> DriftMonitor:
    return DriftMonitor(profile, DriftSettings(**settings), "m", "1", clock or Clock())


def feed(
    m: DriftMonitor, x: np.ndarray, scores: np.ndarray | None = None, batch: int = 100
) -> None:
    """Observe x in batches, then tick once."""
    for start in range(0, len(x), batch):
        outputs = {} if scores is None else {"y": scores[start : start + batch]}
        m.observe({"x": x[start : start + batch]}, outputs)
    m.tick()


def uniform_scores(rng: np.random.Generator, rows: int, top: float = 0.1) -> np.ndarray:
    """Scores whose argmax is class 0 with probability `top`, the other classes evenly."""
    p = np.full(CLASSES, (1 - top) / (CLASSES - 1))
    p[0] = top
    return np.eye(CLASSES)[rng.choice(CLASSES, rows, p=p)]


# ----------------------------------------------------------------------------- statistics


def test_statistics_match_a_hand_computed_example() -> None:
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    # PSI: 0.25 ln 2 + (-0.25) ln(2/3) = 0.25 ln 3
    assert drift.psi(p, q, epsilon=0.0) == pytest.approx(0.25 * np.log(3))
    # JS: m = (0.375, 0.625); 0.5 * KL(p||m) + 0.5 * KL(q||m) in bits
    kl_p = 0.5 * np.log2(0.5 / 0.375) + 0.5 * np.log2(0.5 / 0.625)
    kl_q = 0.25 * np.log2(0.25 / 0.375) + 0.75 * np.log2(0.75 / 0.625)
    assert drift.js_distance(p, q) == pytest.approx(np.sqrt(0.5 * kl_p + 0.5 * kl_q))
    assert drift.ks_binned(p, q) == pytest.approx(0.25)
    assert drift.class_distance(p, q) == pytest.approx(0.5 * (0.0625 / 0.75 + 0.0625 / 1.25))


def test_statistics_bounds_and_identity() -> None:
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert drift.psi(p, p) == pytest.approx([0.0, 0.0])
    assert drift.js_distance(p, p) == pytest.approx([0.0, 0.0])
    disjoint_p, disjoint_q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert drift.js_distance(disjoint_p, disjoint_q) == pytest.approx(1.0)
    assert drift.ks_binned(disjoint_p, disjoint_q) == pytest.approx(1.0)
    assert drift.class_distance(disjoint_p, disjoint_q) == pytest.approx(1.0)
    # a bin empty in the reference gives a finite PSI thanks to epsilon
    assert np.isfinite(drift.psi(disjoint_p, disjoint_q, epsilon=1e-4))


def test_js_distance_agrees_with_scipy() -> None:
    distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 5, (50, 12))  # zeros included
    ref = rng.integers(1, 5, (50, 12))
    p, q = drift.shares(counts), drift.shares(ref)
    expected = [distance.jensenshannon(a, b, base=2) for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(drift.js_distance(p, q), expected, atol=1e-12)


def test_shares_of_an_empty_row_are_nan_and_reported_as_none(gaussian: ReferenceProfile) -> None:
    m = monitor(gaussian, window_samples=300)
    x = np.random.default_rng(0).normal(size=(300, FEATURES))
    x[:, 4] = np.nan  # feature 4 never has a value
    feed(m, x)
    last = m.report()["last_window"]
    assert last["psi"]["4"] is None
    assert last["psi"]["3"] is not None
    json.dumps(m.report(), allow_nan=False)


# ----------------------------------------------------------------------------- settings


def test_settings_defaults_and_overrides() -> None:
    assert DriftSettings.from_mapping(None) == DriftSettings()
    s = DriftSettings.from_mapping({"window_samples": 500, "psi_alert": 0.3, "every": 2.0})
    assert (s.window_samples, s.psi_alert, s.every, s.psi_warn) == (500, 0.3, 2, 0.1)
    assert isinstance(s.every, int)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"window_size": 10}, "unknown drift setting 'window_size'"),
        ({"every": 1.5}, "'every' must be a whole number"),
        ({"ring": True}, "'ring' must be a whole number"),
        ({"psi_alert": "high"}, "'psi_alert' must be a number"),
        ({"window_seconds": float("inf")}, "'window_seconds' must be a number"),
        ({"ring": float("nan")}, "'ring' must be a whole number"),
        ({"window_seconds": 0}, "'window_seconds' must be > 0"),
        ({"every": 0}, "'every' must be > 0"),
        ({"js_alert": 1.5}, "'js_alert' is a distance in (0, 1]"),
        ({"noise_alpha": 0}, "'noise_alpha' must be > 0"),
        ({"noise_alpha": 2}, "'noise_alpha' is a probability in (0, 1]"),
        ({"epsilon": 0.5}, "'epsilon' must be at most 0.01"),
        ({"psi_warn": 0.3}, "'psi_warn' (0.3) must not exceed 'psi_alert' (0.2)"),
        (
            {"window_samples": 100, "min_samples": 300},
            "'min_samples' (300) must not exceed 'window_samples' (100)",
        ),
    ],
)
def test_settings_errors_name_the_key(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DriftSettings.from_mapping(mapping)


def test_a_small_window_lowers_min_samples_to_fit() -> None:
    assert DriftSettings.from_mapping({"window_samples": 100}).min_samples == 100
    assert DriftSettings.from_mapping({"window_samples": 5000}).min_samples == 300


# ----------------------------------------------------------------------------- windows


def test_window_closes_at_window_samples(gaussian: ReferenceProfile) -> None:
    m = monitor(gaussian, window_samples=100, min_samples=50)
    x = np.random.default_rng(1).normal(size=(30, FEATURES))
    for _ in range(3):
        m.observe({"x": x}, {})
    m.tick()
    assert m.windows_closed == 0  # 90 rows: still open
    m.observe({"x": x}, {})  # 120 rows: the batch that reaches 100 closes it
    m.tick()
    assert m.windows_closed == 1
    assert m.report()["last_window"]["rows"] == 120


def test_window_closes_by_time_on_tick_and_on_observe(gaussian: ReferenceProfile) -> None:
    clock = Clock()
    m = monitor(gaussian, clock, window_seconds=10.0, min_samples=50)
    x = np.random.default_rng(2).normal(size=(60, FEATURES))
    m.tick()
    assert m.windows_closed == 0  # nothing observed: no empty windows recorded
    m.observe({"x": x}, {})
    clock.now += 9.9
    m.tick()
    assert m.windows_closed == 0
    clock.now += 0.1
    m.tick()
    assert m.windows_closed == 1
    last = m.report()["last_window"]
    assert last["rows"] == 60
    # observe closes a window whose time ran out before the batch; the batch opens the next
    m.observe({"x": x}, {})
    clock.now += 11
    m.observe({"x": x[:55]}, {})
    m.tick()
    assert [r["rows"] for r in m.report()["recent"]] == [60, 60]
    clock.now += 10
    m.tick()
    assert [r["rows"] for r in m.report()["recent"]] == [60, 60, 55]


def test_small_time_closed_window_is_recorded_not_judged(gaussian: ReferenceProfile) -> None:
    clock = Clock()
    m = monitor(gaussian, clock, window_seconds=1.0)
    shifted = np.random.default_rng(3).normal(size=(50, FEATURES)) + 3.0
    m.observe({"x": shifted}, {})
    clock.now += 1
    m.tick()
    report = m.report()
    assert report["recent"][0]["judged"] is False
    assert report["recent"][0]["alert"] is False
    assert report["alert"] is False
    assert report["windows_judged"] == 0
    assert report["last_window"] is None


def test_every_kth_batch_is_binned(gaussian: ReferenceProfile) -> None:
    m = monitor(gaussian, window_samples=30, min_samples=10, every=3)
    x = np.random.default_rng(4).normal(size=(10, FEATURES))
    for _ in range(9):  # batches 0, 3 and 6 are binned
        m.observe({"x": x}, {})
    m.tick()
    assert [r["rows"] for r in m.report()["recent"]] == [30]


def test_ring_and_pending_windows_are_bounded(gaussian: ReferenceProfile) -> None:
    m = monitor(gaussian, window_samples=10, min_samples=10, ring=3)
    x = np.random.default_rng(5).normal(size=(10, FEATURES))
    for _ in range(10):  # ten windows close with no tick: only the last three wait
        m.observe({"x": x}, {})
    m.tick()
    assert (m.windows_closed, m.windows_dropped) == (3, 7)
    for _ in range(10):
        m.observe({"x": x}, {})
        m.tick()
    assert len(m.report()["recent"]) == 3
    assert m.windows_judged == 13


def test_concurrent_observers_count_every_row(gaussian: ReferenceProfile) -> None:
    clock = Clock()
    m = monitor(gaussian, clock, window_samples=1000, min_samples=1, ring=10_000)
    rng = np.random.default_rng(6)
    batches = [rng.normal(size=(int(n), FEATURES)) for n in rng.integers(1, 64, 50)]
    scores = [uniform_scores(rng, len(b)) for b in batches]
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(10):
            for b, s in zip(batches, scores, strict=True):
                m.observe({"x": b}, {"y": s})

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.now += 3600
    m.tick()
    rows = [r["rows"] for r in m.report()["recent"]]
    assert sum(rows) == 8 * 10 * sum(len(b) for b in batches)
    assert m.windows_dropped == 0


def test_misfit_batches_are_skipped_and_logged_once(
    gaussian: ReferenceProfile, caplog: pytest.LogCaptureFixture
) -> None:
    m = monitor(gaussian)
    with caplog.at_level(logging.WARNING, logger="runtime.monitoring.drift"):
        m.observe({"x": np.zeros((4, FEATURES + 1))}, {})
        m.observe({"other": np.zeros((4, FEATURES))}, {})
        m.observe({"x": np.zeros((0, FEATURES))}, {})  # empty: nothing to do, not a misfit
    assert m.batches_skipped == 2
    assert len(caplog.records) == 1


def test_images_are_flattened_to_the_profile_features() -> None:
    rng = np.random.default_rng(8)
    p = profiles.build(rng.normal(size=(2000, 2, 3)), "x")
    m = DriftMonitor(p, DriftSettings(window_samples=300), "m", "1", Clock())
    feed(m, rng.normal(size=(300, 2, 3)).astype(np.float32))
    assert m.report()["last_window"]["rows"] == 300
    assert m.batches_skipped == 0


def test_label_outputs_count_and_misfit_scores_are_ignored(gaussian: ReferenceProfile) -> None:
    rng = np.random.default_rng(19)
    x = rng.normal(size=(300, FEATURES))
    m = monitor(gaussian, window_samples=300)
    labels = np.array([0, 1, 2, -1, 99] * 60, np.int64)  # out-of-range labels are not counted
    m.observe({"x": x}, {"y": labels})
    m.tick()
    # counted shares (1/3, 1/3, 1/3, 0...) against uniform tenths
    expected = drift.class_distance(np.array([1 / 3] * 3 + [0.0] * 7), np.full(10, 0.1))
    assert m.report()["last_window"]["class_distance"] == pytest.approx(expected)
    m.observe({"x": x}, {"y": rng.normal(size=(300, CLASSES + 1))})
    m.tick()
    assert m.report()["last_window"]["class_distance"] is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_warm_runs_the_kernels_without_touching_the_window(
    gaussian: ReferenceProfile, dtype: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """warm() calls observe's kernels on the model's tensors, writable and read-only (so the
    first batch pays no compile), but counts nothing."""
    calls: list[tuple[str, Any]] = []
    for name in ("histogram_add", "argmax_add"):
        real = getattr(drift.compiled, name)

        def recording(x: Any, *rest: Any, _name: str = name, _real: Any = real) -> None:
            a = np.asarray(x)
            calls.append((_name, a.dtype, a.flags.writeable, len(a)))
            _real(x, *rest)

        monkeypatch.setattr(drift.compiled, name, recording)
    m = monitor(gaussian, window_samples=300)
    m.warm({"x": np.zeros((1, FEATURES), dtype)}, {"y": np.zeros((1, CLASSES), np.float32)})
    assert calls == [
        ("histogram_add", np.dtype(dtype), True, 1),
        ("histogram_add", np.dtype(dtype), False, 1),  # as raw gRPC tensors come
        ("histogram_add", np.dtype(dtype), True, 256),  # a full buffer
        ("histogram_add", np.dtype(dtype), False, 256),
        ("argmax_add", np.dtype(np.float32), True, 1),
    ]
    m.warm({"x": np.zeros((1, FEATURES + 1), dtype)}, {})  # does not fit: nothing, silently
    assert m.batches_skipped == 0
    assert not m._window.counts.any()
    assert not m._window.classes.any()
    assert not m._window.rows


def window_psi(m: DriftMonitor, rows: np.ndarray) -> np.ndarray:
    """The PSI per feature of a window holding exactly these rows."""
    counts = kernels.histogram(rows, m.profile.edges)
    return drift.psi(drift.shares(counts), m.profile.proportions, m.settings.epsilon)


def test_buffered_rows_are_binned_into_the_window_they_arrived_in(
    gaussian: ReferenceProfile,
) -> None:
    """Small batches wait in the buffer; batches as large as it are binned at once; a change
    of dtype, a full buffer and every close flush it, into the window the rows came in."""
    clock = Clock()
    m = monitor(gaussian, clock, window_samples=600, window_seconds=60.0, min_samples=1)
    assert len(m._buffer) == 256  # 64 KiB of float32 rows of 20 features would be 819
    rng = np.random.default_rng(12)
    first = [rng.normal(size=(n, FEATURES)).astype(dt) for n, dt in
             [(1, np.float32), (7, np.float32), (300, np.float32), (3, np.float64),
              (250, np.float32), (1, np.int64)]]  # fmt: skip
    for batch in first:
        m.observe({"x": batch}, {})
    clock.now += 61  # the next batch finds the window's time up: it closes first
    second = rng.normal(size=(5, FEATURES))
    m.observe({"x": second}, {})
    m.tick()
    assert m.report()["last_window"]["rows"] == 562
    got = np.array(list(m.report()["last_window"]["psi"].values()))
    np.testing.assert_allclose(got, window_psi(m, np.vstack(first)), rtol=1e-12)
    clock.now += 61
    m.tick()  # closed by time in tick: the buffered rows go with it
    assert m.report()["last_window"]["rows"] == 5
    got = np.array(list(m.report()["last_window"]["psi"].values()))
    np.testing.assert_allclose(got, window_psi(m, second), rtol=1e-12)


def test_integer_label_outputs_are_classes_already() -> None:
    assert drift.predicted_classes(np.array([3, 1, 2])).tolist() == [3, 1, 2]
    assert drift.predicted_classes(np.array([[0.1, 0.9], [0.8, 0.2]])).tolist() == [1, 0]
    assert drift.predicted_classes(np.array([[2], [0]], np.int64)).tolist() == [2, 0]


# ----------------------------------------------------------------------------- alerts


def test_alert_transitions_are_logged_once(
    gaussian: ReferenceProfile, caplog: pytest.LogCaptureFixture
) -> None:
    m = monitor(gaussian)
    rng = np.random.default_rng(9)
    with caplog.at_level(logging.INFO, logger="runtime.monitoring.drift"):
        for shift in (0.0, 1.0, 1.0, 1.0, 0.0, 0.0):
            feed(m, rng.normal(size=(1000, FEATURES)) + shift)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "drift alert for m v1" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "cleared" in infos[0].getMessage()
    assert m.alerts_raised == 1
    assert m.alert is False


def test_alert_holds_through_a_warn_window(gaussian: ReferenceProfile) -> None:
    m = monitor(gaussian)
    rng = np.random.default_rng(10)
    feed(m, rng.normal(size=(1000, FEATURES)) + 1.0)
    assert m.alert
    x = rng.normal(size=(1000, FEATURES))
    x[:, 0] += 0.3  # PSI about 0.09 to 0.14: between warn and alert on one feature
    x[:, 1] += 0.4
    feed(m, x)
    assert m.report()["last_window"]["alert"] is False  # a warn window...
    assert (m.warn, m.alert) == (True, True)  # ...does not clear the alert
    feed(m, rng.normal(size=(1000, FEATURES)))
    assert (m.warn, m.alert) == (False, False)


# ----------------------------------------------------------------------------- quality


def test_in_distribution_false_alarm_rate_is_at_most_one_percent(
    gaussian: ReferenceProfile,
) -> None:
    m = monitor(gaussian, ring=200)
    rng = np.random.default_rng(11)
    for _ in range(200):
        feed(m, rng.normal(size=(1000, FEATURES)), uniform_scores(rng, 1000))
    recent = m.report()["recent"]
    assert len(recent) == 200
    assert all(r["judged"] for r in recent)
    false_alarms = sum(r["alert"] for r in recent) / len(recent)
    assert false_alarms <= 0.01
    assert max(r["max_psi"] for r in recent) < 0.1  # measured: about 0.04


def test_half_sigma_shift_on_three_features_alerts_in_the_first_window(
    gaussian: ReferenceProfile,
) -> None:
    rng = np.random.default_rng(12)
    for trial in range(20):
        m = monitor(gaussian)
        feed(m, rng.normal(size=(1000, FEATURES)), uniform_scores(rng, 1000))
        assert not m.alert
        x = rng.normal(size=(1000, FEATURES))
        shifted = rng.choice(FEATURES, 3, replace=False)
        x[:, shifted] += 0.5
        feed(m, x, uniform_scores(rng, 1000))
        assert m.alert, trial
        worst = {w["feature"] for w in m.report()["worst_features"][:3]}
        assert worst == {str(f) for f in shifted}


def test_class_prior_shift_alerts_in_the_first_window(gaussian: ReferenceProfile) -> None:
    rng = np.random.default_rng(13)
    for trial in range(20):
        m = monitor(gaussian)
        feed(m, rng.normal(size=(1000, FEATURES)), uniform_scores(rng, 1000))
        assert not m.alert
        feed(m, rng.normal(size=(1000, FEATURES)), uniform_scores(rng, 1000, top=0.3))
        assert m.alert, trial
        last = m.report()["last_window"]
        assert last["class_distance"] >= 0.03
        assert max(last["psi"].values()) < 0.2  # the inputs did not move


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(14).permutation(len(x))
    train, held = order[:1347], order[1347:]
    return x[train], y[train], x[held], y[held]


def nearest_centroid(train_x: np.ndarray, train_y: np.ndarray) -> Callable[[np.ndarray], Any]:
    """A tiny digits classifier: scores are negative distances to each class's mean image."""
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in range(CLASSES)])
    return lambda x: -((x[:, None, :] - centroids[None]) ** 2).sum(axis=2)


def test_digits_held_out_stays_quiet_and_inverted_alerts(digits: Any) -> None:
    train_x, train_y, held_x, _ = digits
    model = nearest_centroid(train_x, train_y)
    names = tuple(f"pixel_{i}" for i in range(64))
    profile = profiles.build(train_x, "x", model(train_x), "y", feature_names=names)
    settings = DriftSettings(window_samples=500, ring=100)
    m = DriftMonitor(profile, settings, "digits", "1", Clock())
    rng = np.random.default_rng(15)
    for _ in range(100):
        rows = held_x[rng.integers(0, len(held_x), 500)]
        feed(m, rows, model(rows))
    recent = m.report()["recent"]
    assert sum(r["alert"] for r in recent) <= 1
    inverted = 16 - held_x[rng.integers(0, len(held_x), 500)]
    feed(m, inverted, model(inverted))
    report = m.report()
    assert report["alert"]
    assert report["worst_features"][0]["psi"] > 1.0
    assert report["worst_features"][0]["feature"].startswith("pixel_")


# ----------------------------------------------------------------------------- reading


def test_chi2_quantile_is_close_to_the_exact_one() -> None:
    """Wilson-Hilferty against scipy's exact quantiles: within 4% up to p = 0.999 and 12%
    at 1 - 1e-5 (df = 1 is the worst; the profiles have about 9)."""
    chi2 = pytest.importorskip("scipy.stats").chi2

    df = np.array([1, 2, 3, 5, 9, 20, 60])
    for p, tolerance in ((0.9, 0.04), (0.999, 0.04), (1 - 1e-5, 0.12)):
        np.testing.assert_allclose(drift.chi2_quantile(p, df), chi2.ppf(p, df), rtol=tolerance)


def null_warn_rate(profile: ReferenceProfile, rows: int, windows: int, **settings: Any) -> float:
    """The share of windows drawn from the profile's own distribution that warn."""
    rng = np.random.default_rng(21)
    m = monitor(profile, window_samples=rows, min_samples=rows, **settings)
    warned = 0
    for _ in range(windows):
        feed(m, rng.normal(size=(rows, profile.features)), batch=rows)
        warned += m.report()["recent"][-1]["warn"]
    return warned / windows


def test_small_windows_against_a_small_profile_warn_only_above_noise() -> None:
    """300-row windows against a 1078-row profile: PSI's sampling noise alone crossed the
    0.1 warn threshold in most windows; the noise floor keeps it to a few percent, and a
    real shift still alerts."""
    rng = np.random.default_rng(20)
    small = profiles.build(rng.normal(size=(1078, FEATURES)), "x")
    assert null_warn_rate(small, 300, 300, noise_alpha=1.0) > 0.25  # floor off
    assert null_warn_rate(small, 300, 300) < 0.01
    m = monitor(small, window_samples=300, min_samples=300)
    shifted = rng.normal(size=(300, FEATURES))
    shifted[:, 4] += 1.0
    feed(m, shifted, batch=300)
    assert m.alert
    last = m.report()["last_window"]
    assert 0.1 < last["psi_noise"] < 0.2
    assert last["psi_noise"] == max(last["psi_floor"].values())
    assert last["psi"]["4"] > 3 * last["psi_floor"]["4"]


def test_features_with_rare_values_get_a_higher_floor() -> None:
    """PSI is noisier than chi-squared says where the profile saw a value only a few times
    (or never): the simulated correction raises that feature's floor, not the others'."""
    rng = np.random.default_rng(22)
    rows = rng.normal(size=(1000, 3))
    rows[:, 2] = np.where(rng.random(1000) < 0.97, 0.0, rng.integers(1, 17, 1000))
    p = profiles.build(rows, "x")
    filled = np.count_nonzero(p.proportions > 0, axis=1) - 1
    assert filled.tolist() == [9, 9, 1]  # the rare values share one bin with its neighbours
    ratio = drift._psi_noise_ratio(p, filled, 300)
    assert (ratio[:2] < 1.5).all()
    assert ratio[2] > 2 * ratio[:2].max()


def test_noise_floor_leaves_large_windows_as_they_were(gaussian: ReferenceProfile) -> None:
    """At 1000 rows against 20,000 the floor (about 0.04) is under every default threshold."""
    m = monitor(gaussian)
    floors = m.floors(1000)
    assert floors is not None
    assert floors.psi.max() < 0.05
    assert floors.js.max() < DriftSettings().js_warn
    assert floors.classes < DriftSettings().class_warn


def test_report_is_json_ready(gaussian: ReferenceProfile) -> None:
    m = monitor(gaussian)
    assert m.report()["last_window"] is None
    rng = np.random.default_rng(16)
    x = rng.normal(size=(1000, FEATURES))
    x[:, 7] += 1.0
    feed(m, x, uniform_scores(rng, 1000))
    report = json.loads(json.dumps(m.report(), allow_nan=False))
    assert (report["model"], report["version"]) == ("m", "1")
    assert report["settings"]["psi_alert"] == 0.2
    assert (report["alert"], report["warn"], report["alerts_raised"]) == (True, True, 1)
    last = report["last_window"]
    assert last["rows"] == 1000
    assert last["start"].endswith("+00:00")
    assert set(last["psi"]) == set(last["js"]) == set(last["ks"]) == set(gaussian.feature_names)
    worst = report["worst_features"]
    assert len(worst) == 5
    assert worst[0]["feature"] == "7"
    assert [w["psi"] for w in worst] == sorted((w["psi"] for w in worst), reverse=True)
    assert report["recent"] == [
        {key: last[key] for key in ("start", "end", "rows", "judged", "max_psi",
                                    "class_distance", "psi_noise", "warn", "alert")}
    ]  # fmt: skip


def test_collector_renders_low_cardinality_families(gaussian: ReferenceProfile) -> None:
    rng = np.random.default_rng(17)
    first, second = monitor(gaussian), DriftMonitor(gaussian, DriftSettings(), "n", "2", Clock())
    feed(first, rng.normal(size=(1000, FEATURES)), uniform_scores(rng, 1000))
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: [first, second]))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    scores = families["conveyor_drift_score"].samples
    assert len(scores) == FEATURES * 3  # per feature and statistic, never per bin
    assert {s.labels["statistic"] for s in scores} == {"psi", "js", "ks"}
    assert {s.labels["model"] for s in scores} == {"m"}
    psi = {s.labels["feature"]: s.value for s in scores if s.labels["statistic"] == "psi"}
    assert psi == pytest.approx(first.report()["last_window"]["psi"])
    windows = families["conveyor_drift_windows"]
    assert windows.type == "counter"
    assert {(s.name, s.labels["model"], s.value) for s in windows.samples} == {
        ("conveyor_drift_windows_total", "m", 1.0),
        ("conveyor_drift_windows_total", "n", 0.0),
    }
    assert len(families["conveyor_drift_alert"].samples) == 2
    assert len(families["conveyor_drift_warn"].samples) == 2
    assert [s.value for s in families["conveyor_drift_window_rows"].samples] == [1000.0]
    assert len(families["conveyor_drift_class_distance"].samples) == 1


# ----------------------------------------------------------------------------- from_samples


def test_from_samples_builds_the_profile(tmp_path: Path) -> None:
    rng = np.random.default_rng(18)
    x, scores = rng.normal(size=(500, 4)), rng.normal(size=(500, 3))
    path = tmp_path / "reference.npz"
    np.savez(path, input=x, scores=scores)
    built = drift.from_samples(path, "input", "scores", bins=5)
    expected = profiles.build(x, "input", scores, "scores", bins=5)
    np.testing.assert_array_equal(built.edges, expected.edges)
    np.testing.assert_array_equal(built.proportions, expected.proportions)
    np.testing.assert_array_equal(built.class_proportions, expected.class_proportions)
    assert (built.output_name, built.rows) == ("scores", 500)
    without = drift.from_samples(path, "input", "absent")
    assert (without.output_name, without.class_proportions.size) == ("", 0)


def test_from_samples_accepts_integer_labels(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    np.savez(path, x=np.zeros((4, 2)), label=np.array([0, 2, 2, 1]))
    built = drift.from_samples(path, "x", "label")
    np.testing.assert_allclose(built.class_proportions, [0.25, 0.25, 0.5])


def test_from_samples_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no array 'input'"):
        drift.from_samples(path, "input")
    with pytest.raises(ValueError, match="3 rows of 'y' for 4 rows of 'x'"):
        drift.from_samples(path, "x", "y")
