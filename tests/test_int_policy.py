"""Integer buffers that differ across inputs (BatchNorm's num_batches_tracked):
zero-weight inputs are not checked, and int_policy first|max|error decides the
rest, the same way for merges, soups, recipes, load_into and greedy soups."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file
from test_cli import assert_one_line_error, run_cli

import ladle
from ladle.engine.verify import verify
from ladle.errors import LadleValueError, MismatchError

from st_io import write_raw

BN_COUNT = "bn.num_batches_tracked"


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _trained(steps: int, seed: int) -> ConvBN:
    """A ConvBN trained ``steps`` SGD steps: num_batches_tracked == steps."""
    torch.manual_seed(0)
    model = ConvBN()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 2, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.fixture
def bn_models(tmp_path):
    """Two trained states (2 and 3 steps) saved as safetensors, and the modules."""
    a, b = _trained(2, 1), _trained(3, 2)
    return (ladle.save(a, tmp_path / "a.safetensors"), ladle.save(b, tmp_path / "b.safetensors"),
            a, b)


def _meta(path) -> dict:
    with safe_open(str(path), "np") as f:
        return f.metadata()


def _loaded_back(path) -> ConvBN:
    """The output loaded into a fresh model by ladle, checked against load_state_dict."""
    model, reference = ConvBN(), ConvBN()
    ladle.load_into(model, [path])
    reference.load_state_dict(load_file(str(path)))
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    model.eval()(torch.randn(1, 3, 6, 6))  # a usable model
    return model


@pytest.mark.parametrize("alpha,endpoint", [("0", 0), ("1", 1)])
def test_endpoints_reproduced_bit_for_bit_through_the_cli(tmp_path, capsys, bn_models,
                                                          alpha, endpoint):
    a, b = bn_models[:2]
    out = tmp_path / f"alpha{alpha}.safetensors"
    for policy in ("first", "max", "error"):  # a zero weight is never checked
        rc, _, err = run_cli(capsys, "merge", a, b, "--alpha", alpha, "-o", out, "--quiet",
                             "--int-policy", policy, "--overwrite")
        assert rc == 0, err
        want = load_file(str((a, b)[endpoint]))
        got = load_file(str(out))
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert got[name].numpy().tobytes() == want[name].numpy().tobytes(), (policy, name)
    assert int(got[BN_COUNT]) == 2 + endpoint


@pytest.mark.parametrize("policy,count", [("first", 2), ("max", 3)])
def test_cli_merge_of_batchnorm_models_per_policy(tmp_path, capsys, bn_models, policy, count):
    a, b = bn_models[:2]
    out = tmp_path / "mid.safetensors"
    args = ["merge", a, b, "--alpha", "0.5", "-o", out, "--quiet"]
    rc, _, err = run_cli(capsys, *args, *(["--int-policy", policy] if policy != "first" else []))
    assert rc == 0, err
    assert _meta(out)["ladle_int_policy"] == policy
    assert int(load_file(str(out))[BN_COUNT]) == count
    assert _loaded_back(out).bn.num_batches_tracked.item() == count
    rc, stdout, err = run_cli(capsys, "verify", out, "--sample", "-1")
    assert rc == 0, stdout + err


def test_cli_error_policy_refuses_naming_the_buffer(tmp_path, capsys, bn_models):
    a, b = bn_models[:2]
    out = tmp_path / "mid"
    rc, _, err = run_cli(capsys, "merge", a, b, "--alpha", "0.5", "-o", out,
                         "--int-policy", "error")
    assert_one_line_error(rc, err, r"tensor 'bn\.num_batches_tracked' \(I64\) differs")
    assert not out.exists()
    rc, _, err = run_cli(capsys, "merge", a, b, "--alpha", "0.5", "-o", out,
                         "--int-policy", "biggest")
    assert_one_line_error(rc, err, r"int_policy must be one of first, max, error, not 'biggest'")


def test_api_merges_soups_and_dry_run(tmp_path, bn_models, capsys):
    a, b = bn_models[:2]
    c = ladle.save(_trained(5, 3), tmp_path / "c.safetensors")
    # first = the first input with a non-zero weight, in input order
    ladle.merge([a, b, c], [0.0, 0.5, 0.5], tmp_path / "m.safetensors", progress=False)
    assert int(load_file(str(tmp_path / "m.safetensors"))[BN_COUNT]) == 3
    ladle.soup([c, a, b], tmp_path / "s.safetensors", int_policy="max", progress=False)
    out = tmp_path / "s.safetensors"
    assert int(load_file(str(out))[BN_COUNT]) == 5 and _meta(out)["ladle_int_policy"] == "max"
    ladle.interpolate(a, b, 0.25, tmp_path / "i", int_policy="max", progress=False)
    assert int(load_file(str(tmp_path / "i" / "model.safetensors"))[BN_COUNT]) == 3
    assert verify(tmp_path / "i", sample=-1).ok
    # live inputs take the same path
    live = ladle.merge([bn_models[2], bn_models[3]], [0.5, 0.5], tmp_path / "l.safetensors",
                       int_policy="max", progress=False)
    assert int(load_file(str(live.out))[BN_COUNT]) == 3
    ladle.merge([a, b], [0.5, 0.5], tmp_path / "d.safetensors", int_policy="max", dry_run=True,
                progress=False)
    assert f"{BN_COUNT} I64[] max(2 inputs)" in capsys.readouterr().out
    with pytest.raises(MismatchError, match="num_batches_tracked"):
        ladle.merge([a, b], [0.5, 0.5], tmp_path / "e.safetensors", int_policy="error",
                    progress=False)
    with pytest.raises(LadleValueError, match="int_policy must be one of"):
        ladle.merge([a, b], [0.5, 0.5], tmp_path / "e.safetensors", int_policy="last")


def test_recipe_per_policy(tmp_path, capsys, bn_models):
    a, b = bn_models[:2]
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: "
                      f"{{weight: 1}}\n  - model: {b}\n    parameters: {{weight: 1}}\n")
    for policy, count in (("first", 2), ("max", 3)):
        out = tmp_path / f"r-{policy}.safetensors"
        rc, _, err = run_cli(capsys, "merge", "--config", recipe, "-o", out, "--quiet",
                             "--int-policy", policy)
        assert rc == 0, err
        assert int(load_file(str(out))[BN_COUNT]) == count
        assert _meta(out)["ladle_int_policy"] == policy
    rc, _, err = run_cli(capsys, "merge", "--config", recipe, "-o", tmp_path / "r-e",
                         "--int-policy", "error")
    assert_one_line_error(rc, err, r"num_batches_tracked")


def test_load_into_per_policy(bn_models):
    a, b = bn_models[:2]
    model = ConvBN()
    ladle.load_into(model, [a, b], [0.5, 0.5])
    assert model.bn.num_batches_tracked.item() == 2
    ladle.load_into(model, [a, b], [0.0, 1.0], int_policy="error")  # zero weight: unchecked
    assert model.bn.num_batches_tracked.item() == 3
    ladle.load_into(model, [b, a], [0.5, 0.5], int_policy="max")
    assert model.bn.num_batches_tracked.item() == 3
    with pytest.raises(MismatchError, match="num_batches_tracked"):
        ladle.load_into(model, [a, b], [0.5, 0.5], int_policy="error")


@pytest.mark.parametrize("policy,count", [("first", 2), ("max", 5)])
def test_greedy_soup_written_equals_the_merge_of_its_weights(tmp_path, bn_models, policy,
                                                             count):
    a, b = bn_models[:2]
    c = ladle.save(_trained(5, 3), tmp_path / "c.safetensors")
    scores = iter([1.0, 3.0, 2.0, 4.0, 5.0])  # ranked b, c, a; every step improves
    model = ConvBN()
    r = ladle.greedy_soup(model, [a, b, c], lambda m: next(scores),
                          out=tmp_path / "g.safetensors", int_policy=policy)
    assert r.counts == [1, 1, 1]
    out = load_file(str(tmp_path / "g.safetensors"))
    assert int(out[BN_COUNT]) == count == model.bn.num_batches_tracked.item()
    assert _meta(tmp_path / "g.safetensors")["ladle_int_policy"] == policy
    merged = ladle.soup([a, b, c], tmp_path / "u.safetensors", int_policy=policy,
                        progress=False)
    assert int(load_file(str(merged.out))[BN_COUNT]) == count


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "int64", "uint64", "bool"])
def test_elementwise_max_every_integer_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    n = 70_000  # crosses chunk boundaries under a small budget
    if dtype == "bool":
        xs = [rng.random(n) < 0.3 for _ in range(3)]
    else:
        info = np.iinfo(dtype)
        xs = [rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True) for _ in range(3)]
    paths = []
    for k, x in enumerate(xs):
        paths.append(tmp_path / f"{k}.safetensors")
        save_numpy({"w": np.full(2, k, np.float32), "x": x}, str(paths[-1]))
    out = tmp_path / "out.safetensors"
    ladle.merge(paths, [1.0, 1.0, 1.0], out, int_policy="max", memory_budget="64KiB",
                threads=2, progress=False)
    with safe_open(str(out), "np") as f:
        got = f.get_tensor("x")
    assert got.dtype == xs[0].dtype
    assert np.array_equal(got, np.maximum(np.maximum(xs[0], xs[1]), xs[2]))
    assert verify(out, sample=-1).ok


def test_max_refuses_non_integer_dtypes(tmp_path):
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"{k}.safetensors")
        # E8M0 (block-scale exponents) is neither integer nor combinable float
        write_raw(paths[-1], {"f8": ("F8_E8M0", [4], bytes([127 + k] * 4))})
    with pytest.raises(LadleValueError, match="'f8'.*integer or bool dtype, not F8_E8M0"):
        ladle.merge(paths, [0.5, 0.5], tmp_path / "o.safetensors", int_policy="max",
                    progress=False)
    ladle.merge(paths, [0.0, 1.0], tmp_path / "o.safetensors", int_policy="max",
                progress=False)  # one input with a non-zero weight: a plain copy
    assert json.loads(_meta(tmp_path / "o.safetensors")["ladle_weights"]) == [0.0, 1.0]
