"""Out-of-core learned soup: streamed gradients against in-memory autograd, identical
ingredients, and memory that does not grow with the number of ingredients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ladle
from ladle.soups.learned import layer_of

from child_env import child_env
from toy_models import TiedNet, data, ingredients, mlp


def _autograd_gradient(module, paths, logits, beta, batch, group_of):
    """The paper's recipe: every model in memory, a functional forward through
    θ = Σ_k softmax(logits)_k θ_k, autograd down to the logits."""
    from safetensors.torch import load_file

    states = [load_file(str(p)) for p in paths]
    logits = logits.detach().clone().requires_grad_(True)
    beta = beta.detach().clone().requires_grad_(True)
    alphas = torch.softmax(logits, dim=0)
    params = {}
    for name, _ in module.named_parameters():
        col = group_of[name]
        acc = None
        for k, s in enumerate(states):
            term = alphas[k, col].float() * s[name]
            acc = term if acc is None else acc + term
        params[name] = acc
    x, y = batch
    loss = F.cross_entropy(beta * torch.func.functional_call(module, params, (x,)), y)
    loss.backward()
    return logits.grad, beta.grad


@pytest.mark.parametrize("by_layer", [False, True])
def test_streamed_gradient_matches_autograd(tmp_path, by_layer):
    x, y = data()
    paths = [ladle.save(mlp(s, width=24), tmp_path / f"m{s}.safetensors") for s in range(4)]
    model = mlp(9, width=24)
    soup = ladle.LearnedSoup(model, paths, by_layer=by_layer, beta=1.5)
    with torch.no_grad():
        soup.logits.copy_(torch.randn(soup.logits.shape, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(0)))
    soup.gradient((x, y))
    expect_logits, expect_beta = _autograd_gradient(model, paths, soup.logits, soup.beta, (x, y),
                                                    soup.layer_index)
    assert soup.logits.shape == (4, 2 if by_layer else 1)
    rel = (soup.logits.grad - expect_logits).norm() / expect_logits.norm()
    assert rel <= 1e-5, float(rel)
    assert float(soup.beta.grad) == pytest.approx(float(expect_beta), rel=1e-5)


def test_learned_soup_of_identical_models_is_uniform(tmp_path):
    x, y = data()
    base = mlp(0)
    paths = [ladle.save(base, tmp_path / f"same{i}.safetensors") for i in range(3)]
    model = mlp(5)
    result = ladle.learned_soup(model, paths, [(x, y)], by_layer=True, epochs=2,
                                out=tmp_path / "learned.safetensors")
    for row in result.alphas:
        assert row == pytest.approx([1 / 3] * len(row), abs=1e-12)
    assert result.layers == ["0", "2"] and len(result.losses) == 2
    assert ladle.open(tmp_path / "learned.safetensors").metadata["ladle_method"] == "learned-soup"


def test_learned_soup_prefers_good_ingredient(tmp_path):
    x, y = data()
    paths = ingredients(tmp_path, 3, mlp(0), noise=0.05, bad=2)
    result = ladle.learned_soup(mlp(4), paths, [(x, y)], epochs=15, lr=0.2)
    assert result.alphas[2][0] < 1 / 3 and result.losses[-1] < result.losses[0]


def test_tied_model_gradient_and_layers():
    assert layer_of("blocks.0.attn.weight") == "blocks.0.attn" and layer_of("w") == "w"
    a, b, model = TiedNet(), TiedNet(), TiedNet()
    idx = torch.randint(0, 11, (8,))
    soup = ladle.LearnedSoup(model, [a, b], by_layer=True)
    soup.gradient((idx, idx))
    assert "out.weight" not in soup.layer_index and torch.isfinite(soup.logits.grad).all()


CHILD = """
import sys, torch, ladle
sys.path.insert(0, sys.argv[1])
from toy_models import mlp
paths = sys.argv[3:]
model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(),
                            torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                            torch.nn.Linear(2048, 10))
x = torch.randn(32, 512, generator=torch.Generator().manual_seed(0))
y = torch.arange(32) % 10
ladle.learned_soup(model, paths, [(x, y)], epochs=int(sys.argv[2]), threads=2,
                   memory_budget="16MiB")
status = open("/proc/self/status").read()
print([l for l in status.splitlines() if l.startswith("VmHWM")][0].split()[1])
"""


def test_memory_does_not_grow_with_ingredients(tmp_path):
    torch.manual_seed(0)
    big = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(),
                              torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                              torch.nn.Linear(2048, 10))  # 5.3M params, 21 MB per ingredient
    paths = []
    for i in range(8):
        with torch.no_grad():
            for p in big.parameters():
                p.add_(0.01)
        paths.append(str(ladle.save(big, tmp_path / f"big{i}.safetensors")))
    env = child_env()
    tests_dir = str(Path(__file__).parent)

    def peak_kib(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", CHILD, tests_dir, "1", *paths[:n]],
                             capture_output=True, text=True, env=env, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    two, eight = peak_kib(2), peak_kib(8)
    # holding the 6 extra ingredients would add 126 MB; allow 10 % (the engine budget,
    # 16 MiB, bounds the pages in flight whatever the number of inputs)
    assert eight <= 1.10 * two, (two, eight)


def test_learned_soup_checks_out_before_any_step(tmp_path):
    x, y = data()
    paths = ingredients(tmp_path, 2, mlp(0))
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    steps = []

    def loss_fn(module, batch, beta):
        steps.append(1)
        return F.cross_entropy(beta * module(batch[0]), batch[1])

    with pytest.raises(ladle.errors.LadleValueError, match="destination exists"):
        ladle.learned_soup(mlp(9), paths, [(x, y)], epochs=1, loss_fn=loss_fn, out=taken)
    # The class API too: fit() checks out= before its first step.
    soup = ladle.soups.learned.LearnedSoup(mlp(9), paths)
    with pytest.raises(ladle.errors.LadleValueError, match="destination exists"):
        soup.fit([(x, y)], epochs=1, loss_fn=loss_fn, out=taken)
    with pytest.raises(OSError, match="parent directory does not exist"):
        soup.fit([(x, y)], epochs=1, loss_fn=loss_fn,
                 out=tmp_path / "missing" / "soup.safetensors")
    assert steps == [] and taken.read_bytes() == b"keep me"
