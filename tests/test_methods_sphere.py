"""multislerp and karcher (ladle.methods.sphere): bit-exact against plain references written
here in docs/methods.md's order (fp64 Gram sums tiled as the engine tiles them,
coefficients in fp64, the fp32 weighted sum or base + task program), close to
mergekit's tensor formulas (transcribed in torch), independent of threads and
chunking, from recipes, with clear errors for bad parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from test_methods_mergekit import SHAPES, _models, _tiled_sum64

from ladle.cli.cli import main
from ladle.errors import LadleValueError
from ladle.methods import methods

from reference import combine, from_f32, to_f32
from st_io import read_checkpoint, write_raw

F32 = np.float32


def _gram(vs: list[np.ndarray]) -> list[list[float]]:
    return [[_tiled_sum64(a.astype(np.float64) * b.astype(np.float64)) for b in vs]
            for a in vs]


def _dot(a: list[float], g: list[list[float]], b: list[float]) -> float:
    return sum(a[i] * g[i][j] * b[j] for i in range(len(a)) for j in range(len(b)))


def _multislerp_coefficients(w: list[float], g: list[list[float]], eps: float) -> list[float]:
    """mergekit's multislerp steps, each vector written as coefficients of the inputs."""
    n = len(w)
    norms = [math.sqrt(g[k][k]) for k in range(n)]
    mean = [w[k] / (norms[k] + eps) for k in range(n)]
    mean_norm = math.sqrt(max(_dot(mean, g, mean), 0.0))
    if mean_norm < eps:
        return list(w)
    mean = [x / mean_norm for x in mean]
    dots = [sum(g[k][j] * mean[j] for j in range(n)) / (norms[k] + eps) for k in range(n)]
    tangent = [0.0] * n
    for k in range(n):  # Σ_k w_k (unit_k − dot_k·mean)
        tangent[k] += w[k] / (norms[k] + eps)
        for j in range(n):
            tangent[j] -= w[k] * dots[k] * mean[j]
    s = math.sqrt(max(_dot(tangent, g, tangent), 0.0)) + eps
    avg = sum(norms[k] * w[k] for k in range(n))
    return [avg * (math.cos(s) * mean[k] + math.sin(s) / s * tangent[k]) for k in range(n)]


def _karcher_coefficients(g: list[list[float]], max_iter: int, tol: float) -> list[float]:
    """mergekit's karcher_merge_tensors, each vector written as coefficients."""
    n = len(g)
    norms = [math.sqrt(g[k][k]) for k in range(n)]
    valid = [k for k in range(n) if norms[k] > tol]
    if not valid:
        return [0.0] * n
    m = len(valid)
    gu = [[g[a][b] / (norms[a] * norms[b]) for b in valid] for a in valid]
    w = [1.0 / m] * m
    u = list(w)
    nu = math.sqrt(max(_dot(u, gu, u), 0.0))
    u = [1.0] + [0.0] * (m - 1) if nu < tol else [x / nu for x in u]
    for _ in range(max_iter):
        big_t = [0.0] * m
        for k in range(m):
            dot = min(1.0, max(-1.0, sum(gu[k][j] * u[j] for j in range(m))))
            theta = math.acos(dot)
            if theta < tol:
                continue
            f = w[k] * theta / math.sin(theta)
            big_t[k] += f
            big_t = [big_t[j] - f * dot * u[j] for j in range(m)]
        nt = math.sqrt(max(_dot(big_t, gu, big_t), 0.0))
        if nt < tol:
            break
        u = [math.cos(nt) * u[j] + math.sin(nt) * big_t[j] / nt for j in range(m)]
        nu = math.sqrt(max(_dot(u, gu, u), 0.0))
        if nu > tol:
            u = [x / nu for x in u]
    out = [0.0] * n
    for j, k in enumerate(valid):
        out[k] = sum(norms) / n * u[j] / norms[k]
    return out


def _expected(xs: list[np.ndarray], coefficients, has_base: bool, out_dtype: str) -> bytes:
    """The fp32 weighted sum, or base + ((+0 + fp32(c_1·δ_1)) + …) with a base."""
    vs = [(x - xs[0]).astype(F32) for x in xs[1:]] if has_base else xs
    c = coefficients(_gram(vs))
    if has_base:
        acc = F32(0) + np.zeros_like(xs[0])
        for ck, v in zip(c, vs):
            acc = (acc + F32(ck) * v).astype(F32)
        return from_f32((xs[0] + acc).astype(F32), out_dtype)
    return combine([from_f32(v, "F32") for v in vs], ["F32"] * len(vs), c, out_dtype)


def _runs(tmp_path, monkeypatch, merge) -> dict:
    """``merge(out, threads, chunk)`` twice: one thread, whole tensors per chunk and
    all tensors in one batch, then two threads, 2048-element chunks, batches of 2."""
    outs = []
    for k, (threads, chunk) in enumerate([(1, 0), (2, 2048)]):
        if k:
            monkeypatch.setattr(methods, "_ROW_BATCH", 2)
        out = tmp_path / f"run{k}.safetensors"
        merge(out, threads, chunk)
        outs.append(read_checkpoint(out))
    assert outs[0] == outs[1]  # independent of threads, chunking and batching
    return outs[0]


@pytest.mark.parametrize("has_base", [True, False])
def test_multislerp_matches_reference(tmp_path, monkeypatch, has_base):
    paths, raws = _models(tmp_path, "BF16", n_models=3)
    weights = [0.5, 1.0, [0.25, 2.0]]  # the third a gradient across layers

    def merge(out, threads, chunk):
        methods.merge_models("multislerp", paths[1:], out,
                             base_model=paths[0] if has_base else None,
                             model_parameters=[{"weight": w} for w in weights],
                             threads=threads, chunk_elems=chunk, progress=False)

    got = _runs(tmp_path, monkeypatch, merge)
    used = raws if has_base else raws[1:]
    positions = methods.layer_positions(list(SHAPES))
    for name in SHAPES:
        w = [methods.resolve_setting(x, name, positions[name]) for x in weights]
        w = [x / sum(w) for x in w]
        xs = [to_f32(r[name][2], "BF16") for r in used]
        expected = _expected(xs, lambda g, w=w: _multislerp_coefficients(w, g, 1e-8),
                             has_base, "BF16")
        assert got[name][2] == expected, name


@pytest.mark.parametrize("has_base", [True, False])
def test_karcher_matches_reference(tmp_path, monkeypatch, has_base):
    paths, raws = _models(tmp_path, "F32", n_models=3)
    # Spread the points: Karcher's iterations then move the estimate.
    for k, r in enumerate(raws):
        for name, (dtype, shape, raw) in r.items():
            x = to_f32(raw, "F32") * F32(1 + k) + F32(0.3 * k)
            r[name] = (dtype, shape, from_f32(x.astype(F32), "F32"))
    paths = [write_raw(tmp_path / f"k{k}.safetensors", r) for k, r in enumerate(raws)]

    def merge(out, threads, chunk):
        methods.merge_models("karcher", paths[1:], out,
                             base_model=paths[0] if has_base else None,
                             parameters={"max_iter": 7, "tol": 1e-9},
                             threads=threads, chunk_elems=chunk, progress=False)

    got = _runs(tmp_path, monkeypatch, merge)
    used = raws if has_base else raws[1:]  # the base is one more point
    for name in SHAPES:
        xs = [to_f32(r[name][2], "F32") for r in used]
        expected = _expected(xs, lambda g: _karcher_coefficients(g, 7, 1e-9), False, "F32")
        assert got[name][2] == expected, name
    # The iterations matter: no iteration is the normalised mean, a different result.
    none = tmp_path / "none.safetensors"
    methods.merge_models("karcher", paths[1:], none, parameters={"max_iter": 0},
                         progress=False)
    assert read_checkpoint(none)["model.layers.0.mlp.weight"] != \
        read_checkpoint(tmp_path / "run0.safetensors")["model.layers.0.mlp.weight"]


def _mergekit_multislerp(torch, tensors, weights, base, eps=1e-8):
    """mergekit/merge_methods/multislerp.py, in fp64."""
    t = torch.stack(tensors) - (base if base is not None else 0)
    flat = t.view(t.shape[0], -1)
    w = torch.tensor(weights, dtype=t.dtype)
    w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    unit = flat / (norms + eps)
    mean = (unit * w.view(-1, 1)).sum(0)
    mean = mean / torch.norm(mean)
    tangent = unit - (unit * mean).sum(-1, keepdim=True) * mean
    tr = (tangent * w.view(-1, 1)).sum(0)
    tn = torch.norm(tr) + eps
    res = (mean * torch.cos(tn) + tr * (torch.sin(tn) / tn)) * (norms.squeeze(-1) * w).sum()
    return res.view(t.shape[1:]) + (base if base is not None else 0)


def _mergekit_karcher(torch, tensors, max_iter=10, tol=1e-5):
    """mergekit/merge_methods/karcher.py's karcher_merge_tensors, in fp64."""
    norms = [torch.linalg.norm(t).item() for t in tensors]
    units = [t / n for t, n in zip(tensors, norms)]
    w = 1.0 / len(tensors)
    u = sum(w * a for a in units)
    u = u / torch.linalg.norm(u)
    for _ in range(max_iter):
        big_t = torch.zeros_like(u)
        for a in units:
            dot = torch.clamp(torch.dot(u.flatten(), a.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() >= tol:
                big_t += w * (theta / torch.sin(theta)) * (a - dot * u)
        nt = torch.linalg.norm(big_t)
        if nt.item() < tol:
            break
        u = torch.cos(nt) * u + torch.sin(nt) * (big_t / nt)
        u = u / torch.linalg.norm(u)
    return sum(w * n for n in norms) * u


def test_sphere_methods_close_to_mergekit_tensor_formulas(tmp_path):
    torch = pytest.importorskip("torch")
    paths, raws = _models(tmp_path, "F32", n_models=3)
    weights = [0.5, 1.0, 2.0]
    out_m, out_k = tmp_path / "m.safetensors", tmp_path / "k.safetensors"
    methods.multislerp(paths[1:], out_m, weights=weights, base=paths[0], progress=False)
    methods.karcher(paths[1:], out_k, progress=False)
    got_m, got_k = read_checkpoint(out_m), read_checkpoint(out_k)
    for name in ("model.layers.0.mlp.weight", "model.layers.1.conv", "model.norm.weight"):
        xs = [torch.from_numpy(to_f32(r[name][2], "F32").astype(np.float64)) for r in raws]
        want_m = _mergekit_multislerp(torch, xs[1:], weights, xs[0]).numpy()
        want_k = _mergekit_karcher(torch, xs[1:]).numpy()
        np.testing.assert_allclose(to_f32(got_m[name][2], "F32"), want_m, rtol=2e-5,
                                   atol=2e-6)
        np.testing.assert_allclose(to_f32(got_k[name][2], "F32"), want_k, rtol=2e-5,
                                   atol=2e-6)


def test_sphere_methods_from_recipes(tmp_path):
    paths, raws = _models(tmp_path, "BF16", n_models=2)
    cases = {"multislerp": {"base_model": str(paths[0]),
                            "models": [{"model": str(p), "parameters": {"weight": w}}
                                       for p, w in zip(paths[1:], [1.0, 3.0])],
                            "parameters": {"normalize_weights": True, "eps": 1e-6}},
             "karcher": {"models": [{"model": str(p)} for p in paths[1:]],
                         "parameters": {"max_iter": 3}}}
    for method, recipe in cases.items():
        cfg = tmp_path / f"{method}.yml"
        cfg.write_text(yaml.safe_dump({"merge_method": method, **recipe}))
        out = tmp_path / f"{method}.safetensors"
        assert main(["merge", "--config", str(cfg), "-o", str(out), "--quiet"]) == 0
        got = read_checkpoint(out)
        for name in SHAPES:
            if method == "multislerp":
                xs = [to_f32(r[name][2], "BF16") for r in raws]
                expected = _expected(
                    xs, lambda g: _multislerp_coefficients([0.25, 0.75], g, 1e-6), True,
                    "BF16")
            else:
                xs = [to_f32(r[name][2], "BF16") for r in raws[1:]]
                expected = _expected(xs, lambda g: _karcher_coefficients(g, 3, 1e-5), False,
                                     "BF16")
            assert got[name][2] == expected, (method, name)


def test_multislerp_single_model_and_two_antipodal_models(tmp_path):
    a = np.arange(1, 9, dtype=F32)
    ra = {"w": ("F32", [8], from_f32(a, "F32"))}
    rb = {"w": ("F32", [8], from_f32(-a, "F32"))}
    pa, pb = write_raw(tmp_path / "a.safetensors", ra), write_raw(tmp_path / "b.safetensors", rb)
    one = tmp_path / "one.safetensors"
    methods.merge_models("multislerp", [pa], one, model_parameters=[{"weight": 2.0}],
                         progress=False)
    assert read_checkpoint(one)["w"][2] == ra["w"][2]  # mergekit returns the tensor
    lerp = tmp_path / "lerp.safetensors"  # zero mean of two: the lerp fallback
    methods.merge_models("multislerp", [pa, pb], lerp,
                         model_parameters=[{"weight": 1.0}, {"weight": 1.0}], progress=False)
    assert read_checkpoint(lerp)["w"][2] == combine([ra["w"][2], rb["w"][2]], ["F32"] * 2,
                                                    [0.5, 0.5], "F32")


def test_sphere_method_errors(tmp_path):
    a = np.arange(1, 9, dtype=F32)
    paths = [write_raw(tmp_path / f"{k}.safetensors", {"w": ("F32", [8], from_f32(x, "F32"))})
             for k, x in enumerate([a, -a, a, -a])]
    out = tmp_path / "out.safetensors"
    # Three vectors whose weighted unit mean is zero: refused, naming the tensor.
    with pytest.raises(LadleValueError, match="multislerp: tensor 'w': the weighted mean"):
        methods.merge_models("multislerp", paths[:3], out,
                             model_parameters=[{"weight": 1.0}, {"weight": 2.0},
                                               {"weight": 1.0}], progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    two = [{"weight": 1.0}, {"weight": 1.0}]
    bad = [("multislerp", {}, [{"weight": 1.0}, {"weight": -1.0}], "sum to zero"),
           ("multislerp", {"eps": -1.0}, two, "'eps' must be >= 0"),
           ("multislerp", {"normalize_weights": "yes"}, two, "true or false"),
           ("multislerp", {}, [{}, {}], "parameter 'weight' of model 0 is required"),
           ("karcher", {"max_iter": -1}, None, "'max_iter' must be an integer >= 0"),
           ("karcher", {"max_iter": 2.5}, None, "'max_iter' must be an integer >= 0"),
           ("karcher", {"tol": -1e-5}, None, "'tol' must be >= 0"),
           ("karcher", {"tol": "x"}, None, "'tol' must be a number"),
           ("karcher", {"t": 0.5}, None, "unknown parameter 't' for karcher")]
    for method, params, model_params, message in bad:
        with pytest.raises(LadleValueError, match=message):
            methods.merge_models(method, paths[:2], out, parameters=params,
                                 model_parameters=model_params, progress=False)
        assert not out.exists()
