"""Prediction-space analyses on cases with known answers (SPEC §4 rows 13, 26, 27, 31–33)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binomtest

from ladle import analysis as A
from ladle.analysis import baselines, calibration, connectivity, diversity, significance
from ladle.errors import LadleValueError


def test_import_is_lazy_and_torch_free():
    code = ("import sys, ladle; A = ladle.analysis; [getattr(A, n) for n in A.__all__]; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert sorted(A.__all__) == sorted(A._OWNER)


def test_hand_computed_pd_cc_kl():
    y = np.array([0, 1, 2, 1])
    f = np.array([0, 1, 2, 0])   # right, right, right, wrong
    g = np.array([0, 2, 2, 1])   # right, wrong, right, right
    assert diversity.prediction_diversity(f, g, y) == 0.5
    # p_o = 2/4; counts f: [2,1,1], g: [1,1,2] -> p_e = (2+1+2)/16
    assert diversity.cohen_kappa_complement(f, g, 3) == pytest.approx((1 - 0.5) / (1 - 5 / 16))
    assert diversity.cohen_kappa_complement(f, f) == 0.0
    lf = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    lg = np.log(np.array([[0.25, 0.75], [0.9, 0.1]]))
    kl = 0.5 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert diversity.mean_kl(lf + 3.0, lg) == pytest.approx(kl)  # shift-invariant
    assert diversity.mean_kl(lf, lf) == pytest.approx(0.0, abs=1e-15)
    logits = np.array([[3.0, 1.0, 0.5], [0.0, 2.0, 2.5]])
    assert diversity.confidence_margin(logits) == pytest.approx((2.0 + 0.5) / 2)


def test_cka_identity_invariances_and_subsample():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8))
    assert diversity.linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    assert diversity.linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)
    y = rng.standard_normal((500, 5))
    c = diversity.linear_cka(x, y)
    assert 0.0 < c < 0.2 and diversity.cka_complement(x, y) == pytest.approx(1 - c)
    big = rng.standard_normal((12_000, 3))
    assert diversity.linear_cka(big, big) == pytest.approx(1.0)
    assert diversity.linear_cka(big, big ** 2, max_samples=1000, seed=1) != \
        diversity.linear_cka(big, big ** 2, max_samples=None)


def test_override_analysis():
    zs = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
    ft = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 1.0], [0.0, 3.0]])
    out = diversity.override_analysis(zs, ft, labels=[0, 1, 1, 1])
    # disagreements: rows 0, 2, 3; mixes: [1, .5] -> 0, [1.5, .5] -> 0, [.5, 1.5] -> 1
    assert out["n_disagree"] == 3
    assert out["override_rate"] == pytest.approx(2 / 3)
    assert out["overridden_rate"] == pytest.approx(1 / 3)
    assert out["acc_ft"] == pytest.approx(2 / 3) and out["acc_zs"] == pytest.approx(1 / 3)


def test_lmc_and_beats_endpoints_on_synthetic_curves():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    concave = [60.0, 70.0, 74.0, 75.0, 72.0]
    dip = [60.0, 55.0, 66.0, 71.0, 72.0]
    assert connectivity.lmc_check(alphas, concave) == [True] * 5
    assert connectivity.lmc_check(alphas, dip) == [True, False, True, True, True]
    assert connectivity.lmc_check(alphas, dip, tol=8.0) == [True] * 5
    assert connectivity.beats_endpoints(alphas, concave) == [False, False, True, True, True]
    assert connectivity.beats_endpoints(alphas, concave, strict=True)[4] is False
    rep = connectivity.connectivity_report(alphas, {"in": concave, "shift": dip})
    assert rep["in"]["connected"] and not rep["shift"]["connected"]
    assert rep["in"]["beating_alphas"] == [0.5, 0.75] and not rep["shift"]["beats_any"]
    with pytest.raises(LadleValueError, match="alpha = 1"):
        connectivity.lmc_check([0.0, 0.5], [1.0, 2.0])


def test_ece_zero_for_perfect_calibration_and_temperature_scaling():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf
    y = np.zeros(n, np.int64)
    pred = np.where(correct, 0, 1)
    probs = np.where(pred[:, None] == np.arange(2), conf[:, None], 1 - conf[:, None])
    assert calibration.expected_calibration_error(probs, y, n_bins=15) < 0.005
    overconfident = np.where(pred[:, None] == np.arange(2), 0.999, 0.001)
    assert calibration.expected_calibration_error(overconfident, y) > 0.2
    # logits from a calibrated model, sharpened by 3: T recovers ~3, ECE drops
    logits = np.log(probs) * 3.0
    report = calibration.calibration_report(logits, y)
    assert report["temperature"] == pytest.approx(3.0, rel=0.02)
    assert report["ece_scaled"] < 0.005 < report["ece"]
    assert report["nll_scaled"] < report["nll"]


def test_mcnemar_matches_scipy_binomtest():
    rng = np.random.default_rng(0)
    for n, pa, pb in [(50, 0.6, 0.7), (400, 0.8, 0.75), (3000, 0.7, 0.71), (5, 0.5, 0.5)]:
        a, b = rng.random(n) < pa, rng.random(n) < pb
        out = significance.mcnemar_exact(a, b)
        b01, b10 = int((a & ~b).sum()), int((~a & b).sum())
        expect = binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
        assert (out["a_only"], out["b_only"]) == (b01, b10)
        assert out["p_value"] == pytest.approx(expect, rel=1e-9, abs=1e-300)
    y = np.array([0, 1, 1, 0])
    logits = np.eye(2)[[0, 1, 0, 0]]
    assert significance.mcnemar_exact(logits, np.array([1, 1, 1, 0]), y)["a_only"] == 1


def test_permutation_test():
    rng = np.random.default_rng(1)
    a = (rng.random(2000) < 0.80).astype(float)
    b = (rng.random(2000) < 0.70).astype(float)
    out = significance.permutation_test(a, b, n_permutations=2000)
    assert out["difference"] == pytest.approx(a.mean() - b.mean())
    assert out["p_value"] < 0.01
    same = significance.permutation_test(a, a, n_permutations=200)
    assert same["p_value"] == 1.0


def test_logit_baselines_and_ema():
    rng = np.random.default_rng(0)
    f0, f1 = rng.standard_normal((2, 20, 4))
    assert np.allclose(baselines.output_ensemble(f0, f1, 0.3), 0.7 * f0 + 0.3 * f1)
    s = baselines.softmax_ensemble(f0, f1, 0.3)
    assert np.allclose(s.sum(1), 1.0)
    r = baselines.random_interpolation(f0, f1, 0.5, seed=3)
    picked1 = (r == f1).all(1)
    assert picked1.any() and (~picked1).any() and np.array_equal(r[~picked1], f0[~picked1])
    assert np.array_equal(baselines.random_interpolation(f0, f1, 0.0), f0)
    ema = {"w": np.ones(3), "step": np.array([1])}
    baselines.ema_update(ema, {"w": np.full(3, 3.0), "step": np.array([7])}, 0.9)
    assert np.allclose(ema["w"], 0.9 * 1 + 0.1 * 3) and ema["step"][0] == 7
    # the closed-form weights reproduce repeated updates
    xs = rng.standard_normal((5, 3))
    run = {"w": xs[0].copy()}
    for x in xs[1:]:
        baselines.ema_update(run, {"w": x}, 0.8)
    w = baselines.ema_weights(5, 0.8)
    assert sum(w) == pytest.approx(1.0) and np.allclose(np.dot(w, xs), run["w"])
