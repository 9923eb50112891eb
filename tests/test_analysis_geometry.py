"""Streamed weight-space analyses against torch/numpy on small models
(SPEC §4 rows 22, 28–30), and the ``ladle analyze`` CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ladle
from ladle.analysis import baselines, geometry, plane, soup_vs_ensemble
from ladle.cli.cli import main
from ladle.errors import LadleValueError

from toy_models import data, mlp, neg_loss


def _perturbed(base: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(base)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m


def _flat(m: torch.nn.Module, names=None) -> np.ndarray:
    sd = m.state_dict()
    names = names or list(sd)
    return np.concatenate([sd[n].double().flatten().numpy() for n in names])


@pytest.fixture
def three(tmp_path):
    base = mlp(0)
    models = [base, _perturbed(base, 1), _perturbed(base, 2)]
    paths = [ladle.save(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(models)]
    return models, paths


def test_streamed_gram_equals_torch(three):
    models, paths = three
    for inputs in (paths, models):
        gram = geometry.streamed_gram(inputs, threads=2)
        for name, g in gram.per_tensor.items():
            ts = [m.state_dict()[name].double().flatten() for m in models]
            expect = np.array([[float(a @ b) for b in ts] for a in ts])
            np.testing.assert_allclose(g, expect, rtol=1e-12, atol=1e-12)
        d = np.stack([_flat(models[1]) - _flat(models[0]), _flat(models[2]) - _flat(models[0])])
        np.testing.assert_allclose(gram.deltas(), d @ d.T, rtol=1e-9)


def test_angle_is_90_degrees_for_orthogonal_deltas_and_gains_are_excluded():
    rng = np.random.default_rng(0)
    theta0 = {"block.0.attn.weight": rng.standard_normal((4, 6)).astype(np.float32),
              "block.0.attn.bias": rng.standard_normal(4).astype(np.float32),
              "block.0.norm.weight": np.ones(6, np.float32)}
    d1 = np.zeros((4, 6), np.float32)
    d1[:2] = 0.5
    d2 = np.zeros((4, 6), np.float32)
    d2[2:] = -0.25
    theta1 = {k: v.copy() for k, v in theta0.items()}
    theta2 = {k: v.copy() for k, v in theta0.items()}
    theta1["block.0.attn.weight"] += d1
    theta2["block.0.attn.weight"] += d2
    for t in (theta1, theta2):  # gains move together: they skew the angle down
        t["block.0.attn.bias"] += 3.0
        t["block.0.norm.weight"] += 3.0
    out = geometry.angle(theta0, theta1, theta2)
    assert out["phi_degrees"] == pytest.approx(90.0, abs=1e-9)
    assert out["tensors"] == ["block.0.attn.weight"] and out["n_elems"] == 24
    assert out["norm1"] == pytest.approx(np.linalg.norm(d1))
    everything = geometry.angle(theta0, theta1, theta2, exclude_gains=False, min_ndim=0)
    assert everything["phi_degrees"] < 60.0
    only_gains = geometry.angle(theta0, theta1, theta2, exclude_gains=False, min_ndim=0,
                                exclude=["*attn.weight"])
    assert only_gains["phi_degrees"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(LadleValueError, match="equals θ0"):
        geometry.angle(theta1, theta1, theta2)


def test_plane_basis_is_orthonormal_and_reconstructs_the_points(three):
    models, paths = three
    gram = geometry.streamed_gram(paths)
    p = plane.plane_basis(gram.deltas())
    thetas = np.stack([_flat(m) for m in models])
    u1, u2 = p.u1 @ thetas, p.u2 @ thetas
    assert u1 @ u1 == pytest.approx(1.0) and u2 @ u2 == pytest.approx(1.0)
    assert u1 @ u2 == pytest.approx(0.0, abs=1e-9)
    for i, (a, b) in enumerate(p.coords):
        np.testing.assert_allclose(p.weights(a, b), np.eye(3)[i], atol=1e-12)
        np.testing.assert_allclose(thetas[0] + a * u1 + b * u2, thetas[i], atol=1e-9)


def test_evaluate_plane_streams_grid_points_into_a_live_model(three, tmp_path):
    models, paths = three
    x, y = data()
    evaluate = neg_loss(x, y)
    target = mlp(5)
    p = plane.plane_basis(geometry.streamed_gram(paths).deltas())
    (a1, _), (a2, b2) = p.coords[1], p.coords[2]
    grid = plane.evaluate_plane(target, *paths, lambda m: {"loss": -evaluate(m)},
                                a=[0.0, a1, a2], b=[0.0, b2])
    assert grid.values["loss"].shape == (2, 3)
    for (j, i), m in (((0, 0), models[0]), ((0, 1), models[1]), ((1, 2), models[2])):
        assert grid.values["loss"][j, i] == pytest.approx(-evaluate(m), abs=1e-5)
    auto = plane.evaluate_plane(target, *paths, evaluate, n=4)
    assert auto.values["score"].shape == (4, 4) and np.isfinite(auto.values["score"]).all()
    out = plane.plot_plane(auto, tmp_path / "plane.png")
    assert out.stat().st_size > 1000


def test_model_linear_in_theta_has_no_soup_ensemble_gap(tmp_path):
    torch.manual_seed(0)
    lin0 = torch.nn.Linear(6, 3, bias=False)
    lin1 = _perturbed(lin0, 1, scale=0.5)
    x, y = data()
    predict = soup_vs_ensemble.module_predict(torch.nn.Linear(6, 3, bias=False), lin0, lin1,
                                              lambda m: m(x))
    rows = soup_vs_ensemble.soup_ensemble_gap(predict, y.numpy(), [0.0, 0.3, 0.5, 1.0])
    for r in rows:
        assert r["gap"] == pytest.approx(0.0, abs=1e-6)
        assert r["estimate"] == pytest.approx(0.0, abs=2e-4)
        assert r["variance"] > 0 or r["alpha"] in (0.0, 1.0)
    assert rows[2]["beta"] > 0


def test_soup_ensemble_estimate_on_quadratic_logit_models():
    """Logits quadratic along the segment, f = f0 + αg + ½α²s·q: at α = ½ the
    estimate equals the first-order term −β·c·E[(p − e_y)·s·q] of the exact gap
    (f_ens − f_soup = c·s·q), so estimate/gap → 1 and the signs agree as s → 0."""
    from ladle.analysis._np import softmax

    rng = np.random.default_rng(0)
    f0, g, q = rng.standard_normal((3, 400, 5)) * 2
    y = (f0 + 0.5 * g + rng.standard_normal((400, 5))).argmax(1)
    for s in (0.3, -0.3, 0.003, -0.003):
        def predict(a: float, s=s) -> np.ndarray:
            return f0 + a * g + 0.5 * a * a * s * q

        (r,) = soup_vs_ensemble.soup_ensemble_gap(predict, y, [0.5], h=1e-3)
        p = softmax(r["beta"] * predict(0.5))
        first = -r["beta"] * 0.125 * ((p - np.eye(5)[y]) * s * q).sum(1).mean()
        assert r["estimate"] == pytest.approx(first, rel=1e-2)
        assert np.sign(r["estimate"]) == np.sign(r["gap"])
        if abs(s) < 0.01:
            assert r["estimate"] == pytest.approx(r["gap"], rel=0.05)


def test_interpolation_advantage_is_positive_for_a_convex_loss():
    x, y = data()
    lin = [torch.nn.Linear(6, 3) for _ in range(2)]
    for i, m in enumerate(lin):
        torch.manual_seed(i)
        torch.nn.init.normal_(m.weight)
    out = geometry.interpolation_advantage(torch.nn.Linear(6, 3), lin[0], lin[1],
                                           neg_loss(x, y))
    assert out["advantage"] > 0  # -CE is concave in the weights of a linear model
    assert out["acc1"] == pytest.approx(neg_loss(x, y)(lin[0]), abs=1e-6)


def test_pairwise_interpolation_advantage_known_answers():
    """score = −‖W‖²: the midpoint of Wi, Wj beats their mean score by ¼‖Wi − Wj‖²
    exactly (a quadratic); a score linear in W has advantage 0."""
    ws = []
    for i in range(3):
        m = torch.nn.Linear(4, 2, bias=False)
        torch.manual_seed(10 + i)
        torch.nn.init.normal_(m.weight)
        ws.append(m)

    def neg_sq(m) -> float:
        return -float(m.weight.detach().double().pow(2).sum())

    out = geometry.pairwise_interpolation_advantage(torch.nn.Linear(4, 2, bias=False), ws,
                                                    neg_sq)
    for i in range(3):
        assert out["accs"][i] == pytest.approx(neg_sq(ws[i]), rel=1e-6)
        assert out["advantage"][i, i] == 0
        for j in range(3):
            if i != j:
                expect = 0.25 * float((ws[i].weight - ws[j].weight).detach().double().pow(2).sum())
                assert out["advantage"][i, j] == pytest.approx(expect, rel=1e-5)
                assert out["advantage"][i, j] == out["advantage"][j, i]
    linear = geometry.pairwise_interpolation_advantage(
        torch.nn.Linear(4, 2, bias=False), ws, lambda m: float(m.weight.detach().double().sum()))
    assert np.abs(linear["advantage"]).max() < 1e-6
    pair = geometry.interpolation_advantage(torch.nn.Linear(4, 2, bias=False), ws[0], ws[2],
                                            neg_sq)
    assert pair["advantage"] == pytest.approx(out["advantage"][0, 2], abs=1e-12)


def test_wiseft_of_a_soup(three, tmp_path):
    _, paths = three
    soup = ladle.soup(paths[1:], tmp_path / "soup.safetensors", progress=False).out
    at1 = baselines.wiseft_soup(paths[0], soup, 1.0, tmp_path / "w1.safetensors",
                                progress=False).out
    assert at1.read_bytes() != b"" and _tensors(at1) == _tensors(soup)
    at0 = baselines.wiseft_soup(paths[0], soup, 0.0, tmp_path / "w0.safetensors",
                                progress=False).out
    assert _tensors(at0) == _tensors(paths[0])
    one_pass = baselines.wiseft_soup(paths[0], paths[1:], 0.5, tmp_path / "w5.safetensors",
                                     progress=False).out
    expect = {k: 0.5 * a + 0.25 * b + 0.25 * c for k, a, b, c in
              zip(*zip(*[(k, *v) for k, v in _merge(paths).items()]))}
    for k, v in _tensors(one_pass).items():
        np.testing.assert_allclose(np.frombuffer(v, np.float32), expect[k], rtol=1e-6)


def _tensors(path) -> dict[str, bytes]:
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(str(path)).items()}


def _merge(paths) -> dict[str, tuple[np.ndarray, ...]]:
    from safetensors.numpy import load_file

    loaded = [load_file(str(p)) for p in paths]
    return {k: tuple(d[k].astype(np.float64).ravel() for d in loaded) for k in loaded[0]}


def test_cli_angle_calibration_diversity(three, tmp_path, capsys):
    _, paths = three
    assert main(["analyze", "angle", *map(str, paths), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"phi_degrees"' in out and '"tensors": 2' in out
    assert main(["analyze", "angle", *map(str, paths), "--include-gains"]) == 0
    assert "tensors" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 4)) * 3
    labels = rng.integers(0, 4, 300)
    np.savez(tmp_path / "a.npz", logits=logits, labels=labels)
    np.savez(tmp_path / "b.npz", logits=logits[:, ::-1])
    assert main(["analyze", "calibration", str(tmp_path / "a.npz")]) == 0
    out = capsys.readouterr().out
    assert "ece_scaled" in out and "temperature" in out
    assert main(["analyze", "diversity", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    assert "mcnemar_p" in capsys.readouterr().out
    assert main(["analyze", "calibration", str(tmp_path / "b.npz")]) == 2


def test_cli_plane_and_advantage(three, tmp_path, capsys):
    """The model-evaluating subcommands with file.py:function hooks: the advantage equals
    the API's, and the plane's plot is written with the grid's best point reported."""
    import json

    _, paths = three
    hooks = tmp_path / "hooks.py"
    hooks.write_text("from toy_models import data, mlp, neg_loss\n"
                     "def model():\n    return mlp(7)\n"
                     "def evaluate(m):\n    return neg_loss(*data())(m)\n")
    opts = ["--model", f"{hooks}:model", "--evaluate", f"{hooks}:evaluate"]
    assert main(["analyze", "advantage", *map(str, paths), *opts, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    api = geometry.pairwise_interpolation_advantage(mlp(7), paths, neg_loss(*data()))
    assert np.allclose(got["advantage"], api["advantage"], rtol=0, atol=1e-12)
    out = tmp_path / "plane.png"
    assert main(["analyze", "plane", *map(str, paths), *opts, "--n", "5", "--out", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["points"] == 25 and res["plot"] == str(out)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["analyze", "advantage", str(paths[0]), *opts]) == 2
