"""Uniform/greedy soups, ensembles, WiSE-FT sweeps and α rules on live toy models."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleValueError

from toy_models import data, ingredients, mlp, neg_loss


def _forbid(monkeypatch):
    """Anything that would build a state dict or load a whole checkpoint raises."""

    def boom(*args, **kwargs):
        raise AssertionError("a streamed soup must not load or build a state dict")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(torch.nn.Module, "state_dict", boom)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", boom)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_streamed_soups_never_materialise_state_dicts(tmp_path, monkeypatch):
    x, y = data()
    base = mlp(0)
    paths = ingredients(tmp_path, 4, base, bad=3)
    model = mlp(9)
    _forbid(monkeypatch)
    evaluate = neg_loss(x, y)
    greedy = ladle.greedy_soup(model, paths, evaluate, out=tmp_path / "greedy.safetensors")
    uniform = ladle.uniform_soup(model, paths[:3], evaluate, out=tmp_path / "uniform")
    curve = ladle.wiseft_sweep(model, paths[0], paths[1], [0.0, 0.5, 1.0], evaluate)
    learned = ladle.learned_soup(model, paths[:3], [(x, y)], epochs=1)
    assert greedy.counts[3] == 0 and len(curve) == 3 and uniform.score is not None
    assert abs(sum(learned.alphas[k][0] for k in range(3)) - 1) < 1e-12


def test_greedy_soup_recipe_and_bit_identical_output(tmp_path):
    x, y = data()
    paths = ingredients(tmp_path, 5, mlp(0), noise=0.2, bad=2)
    model = mlp(9)
    snapshots = []
    score_fn = neg_loss(x, y)

    def evaluate(m):
        snapshots.append(_params(m))
        return score_fn(m)

    log = tmp_path / "log.jsonl"
    r = ladle.greedy_soup(model, paths, evaluate, out=tmp_path / "soup.safetensors", log=log)
    assert r.counts[2] == 0  # the ×10 ingredient is rejected
    assert r.score >= max(r.individual_scores)  # never below the best single model
    assert r.history[0]["candidate"] == max(range(5), key=lambda i: r.individual_scores[i])
    # 5 individual evaluations, then 4 tentative soups (the first acceptance is free)
    assert len(snapshots) == 5 + 4
    last = max(i for i, h in enumerate(r.history) if h["accepted"])
    scored = snapshots[5 + last - 1] if last > 0 else snapshots[r.history[0]["candidate"]]
    written = load_file(str(tmp_path / "soup.safetensors"))
    for name, value in scored.items():
        assert torch.equal(written[name], value), name
        assert torch.equal(dict(model.named_parameters())[name].detach(), value)
    meta = ladle.open(tmp_path / "soup.safetensors").metadata
    assert json.loads(meta["ladle_recipe"])["counts"] == r.counts
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [rec["method"] for rec in lines].count("greedy-soup/individual") == 5
    assert lines[-1]["method"] == "greedy-soup" and lines[-1]["score"] == r.score


def test_greedy_accepting_everything_is_the_uniform_soup_on_disk_too(tmp_path):
    paths = ingredients(tmp_path, 3, mlp(0, dtype=torch.bfloat16))
    counter = iter(range(100))
    always_better = lambda m: float(next(counter))
    a, b = mlp(1, dtype=torch.bfloat16), mlp(1, dtype=torch.bfloat16)
    ga = ladle.greedy_soup(a, paths, always_better, order="given", accumulator="ram")
    gb = ladle.greedy_soup(b, paths, lambda m: float(next(counter)), order="given",
                           accumulator="disk", workdir=tmp_path)
    assert ga.counts == gb.counts == [1, 1, 1]
    assert not list(tmp_path.glob("ladle-soup-*"))  # disk sums cleaned up
    u = mlp(1, dtype=torch.bfloat16)
    ladle.uniform_soup(u, paths)
    for pa, pb, pu in zip(a.parameters(), b.parameters(), u.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pu)


def test_identical_models_and_the_tie_flag(tmp_path):
    x, y = data()
    base = mlp(0)
    paths = [ladle.save(base, tmp_path / f"same{i}.safetensors") for i in range(4)]
    model = mlp(3)
    ladle.uniform_soup(model, paths)  # (4 θ) · 1/4 == θ exactly
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters()))
    evaluate = neg_loss(x, y)
    strict = ladle.greedy_soup(model, paths[:2], evaluate, order="given")
    loose = ladle.greedy_soup(model, paths[:2], evaluate, order="given", strict=False)
    assert strict.counts == [1, 0] and loose.counts == [1, 1]


def test_orders_and_sampling_with_replacement(tmp_path):
    x, y = data()
    paths = ingredients(tmp_path, 4, mlp(0), noise=0.1)
    model = mlp(3)
    evaluate = neg_loss(x, y)
    a = ladle.greedy_soup(model, paths, evaluate, order="random", seed=3)
    b = ladle.greedy_soup(model, paths, evaluate, order="random", seed=3)
    assert [h["candidate"] for h in a.history] == [h["candidate"] for h in b.history]
    r = ladle.greedy_soup(model, paths, evaluate, with_replacement=True, n_steps=9)
    assert len(r.history) == 9 and sum(r.counts) == sum(h["accepted"] for h in r.history)
    assert ladle.soups.soups.candidate_order(3, order="given", with_replacement=True,
                                       n_steps=5) == [0, 1, 2, 0, 1]
    with pytest.raises(LadleValueError):
        ladle.soups.soups.candidate_order(3, order="best")


def test_logit_and_greedy_ensembles(tmp_path):
    x, y = data()
    paths = ingredients(tmp_path, 3, mlp(0), noise=0.3, bad=1)
    model = mlp(3)

    def predict(m):
        with torch.no_grad():
            return m(x)

    def accuracy(logits):
        return float((torch.as_tensor(logits).argmax(1) == y).float().mean())

    ens = ladle.logit_ensemble(model, paths, predict, accuracy)
    mean = sum(predict(ladle.load_into(model, [p]) and model) for p in paths) / 3
    assert ens.score == pytest.approx(accuracy(mean))
    greedy = ladle.greedy_ensemble(model, paths, predict, lambda z: -float(
        torch.nn.functional.cross_entropy(torch.as_tensor(z, dtype=torch.float32), y)))
    assert greedy.counts[1] == 0 and greedy.score >= max(
        -float(torch.nn.functional.cross_entropy(torch.as_tensor(z), y)) for z in [
            predict(ladle.load_into(model, [p]) and model) for p in paths])


def test_wiseft_sweep_endpoints_and_selection_rules(tmp_path):
    zs, ft = mlp(1), mlp(2)
    model = mlp(3)
    seen = []
    curve = ladle.wiseft_sweep(model, zs, ft, evaluate=lambda m: seen.append(_params(m)) or 0.0)
    assert [p.alpha for p in curve] == [round(0.05 * i, 2) for i in range(21)]
    assert all(torch.equal(seen[0][n], p) for n, p in _params(zs).items())
    assert all(torch.equal(seen[-1][n], p) for n, p in _params(ft).items())
    with pytest.raises(LadleValueError, match="shares memory"):
        ladle.wiseft_sweep(model, model, ft, evaluate=lambda m: 0.0)
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    ident = [70.0, 76.0, 79.0, 80.5, 80.0]
    ood = [60.0, 63.0, 62.0, 58.0, 50.0]
    assert ladle.fixed_alpha() == 0.5
    assert ladle.best_on_heldout(alphas, ident) == 0.75
    assert ladle.best_ood_without_id_loss(alphas, ident, ood) == 0.75
    assert ladle.best_ood_without_id_loss(alphas, ident, ood, epsilon=1.0) == 0.5
    assert ladle.best_id_without_ood_loss(alphas, ident, ood) == 0.75 - 0.25


def test_cli_greedy_soup_and_sweep(tmp_path, capsys):
    paths = ingredients(tmp_path, 3, mlp(0), noise=0.2, bad=2)
    import toy_models

    tests_dir = str(toy_models.__file__).rsplit("/", 1)[0]
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nsys.path.insert(0, {tests_dir!r})\n"
                    "from toy_models import mlp, data, neg_loss\n"
                    "x, y = data()\nevaluate = neg_loss(x, y)\n"
                    "def build():\n    return mlp(7)\n")
    args = ["soup", "--greedy", *map(str, paths), "-o", str(tmp_path / "g.safetensors"),
            "--model", f"{hook}:build", "--evaluate", f"{hook}:evaluate",
            "--log", str(tmp_path / "log.jsonl")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "accepted" in out and "greedy soup of" in out
    assert (tmp_path / "g.safetensors").exists()
    assert main(["sweep", str(paths[0]), str(paths[1]), "--model", f"{hook}:build",
                 "--evaluate", f"{hook}:evaluate", "--alphas", "0", "0.5", "1"]) == 0
    assert "alpha" in capsys.readouterr().out
    assert main(["sweep", str(paths[0]), str(paths[1]), "--model", "nope",
                 "--evaluate", f"{hook}:evaluate"]) == 2


@pytest.mark.parametrize("bad", [float("nan"), None, "0.9", True, torch.tensor([0.5]),
                                 torch.tensor(float("nan"))])
def test_greedy_soup_refuses_a_non_number_score_naming_the_ingredient(tmp_path, bad):
    paths = ingredients(tmp_path, 3, mlp(0), noise=0.2)
    out = tmp_path / "soup.safetensors"
    calls = []

    def evaluate(m):  # the second ingredient's individual evaluation goes wrong
        calls.append(1)
        return bad if len(calls) == 2 else 1.0 + len(calls)

    with pytest.raises(LadleValueError, match=r"evaluate\(module\) for ingredient 1 .*ing1"):
        ladle.greedy_soup(mlp(9), paths, evaluate, out=out)
    assert not out.exists()
    # During the greedy steps (individual scores given): named as the candidate of a step.
    calls.clear()
    with pytest.raises(LadleValueError, match=r"greedy step 2 for candidate ingredient 2 .*ing2"):
        ladle.greedy_soup(mlp(9), paths, evaluate, out=out, order="given",
                          scores=[1.0, 0.5, 0.2])
    assert not out.exists()
    with pytest.raises(LadleValueError, match=r"scores\[2\]"):
        ladle.greedy_soup(mlp(9), paths, evaluate, scores=[1.0, 0.5, bad])


def test_greedy_soup_numpy_and_torch_scalars_are_scores(tmp_path):
    import numpy as np

    paths = ingredients(tmp_path, 3, mlp(0), noise=0.2)
    values = iter([np.float32(0.5), torch.tensor(0.25), np.int64(1), torch.tensor(2.0),
                   np.array(3.0)])
    r = ladle.greedy_soup(mlp(9), paths, lambda m: next(values))
    assert r.individual_scores == [0.5, 0.25, 1.0] and r.score == 3.0
    assert r.counts == [1, 1, 1]
