"""Greedy soup over 8 ingredients of a ~100M-parameter model: ladle (streamed
through the live model, fp32 running sums) vs the papers' in-memory recipe (load
every state dict, average in torch, ``load_state_dict`` per tentative soup), each in
its own child process, same ingredients, same evaluate, one run. Reports peak RSS
and wall time and checks both pick the same ingredients.

Example:
    python benchmarks/bench_greedy_soup.py --workdir bench-work/greedy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from memwatch import run_measured

WIDTH, DEPTH = 4096, 6  # 6 × (4096² + 4096) ≈ 100.7M parameters

COMMON = f"""
import sys, time, torch
torch.set_num_threads(2)
def build():
    torch.manual_seed(0)
    layers = []
    for _ in range({DEPTH}):
        layers += [torch.nn.Linear({WIDTH}, {WIDTH}), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])
g = torch.Generator().manual_seed(123)
X = torch.randn(16, {WIDTH}, generator=g)
T = torch.randn(16, {WIDTH}, generator=g)
def evaluate(m):
    with torch.no_grad():
        return -float(((m(X) - T) ** 2).mean())
paths = sys.argv[1:]
"""

LADLE = COMMON + """
import ladle
model = build()
r = ladle.greedy_soup(model, paths, evaluate, out=paths[0] + ".ladle-soup.safetensors",
                      overwrite=True)
print("RESULT", r.counts, r.score)
"""

TORCH = COMMON + """
from safetensors.torch import load_file, save_file
model = build()
states = [load_file(p) for p in paths]
scores = []
for sd in states:
    model.load_state_dict(sd)
    scores.append(evaluate(model))
order = sorted(range(len(states)), key=lambda i: -scores[i])
chosen, best = [], float("-inf")
for i in order:
    trial = chosen + [i]
    soup = {k: sum(states[j][k] for j in trial) / len(trial) for k in states[0]}
    model.load_state_dict(soup)
    s = scores[i] if not chosen else evaluate(model)
    if not chosen or s > best:
        chosen, best = trial, s
soup = {k: sum(states[j][k] for j in chosen) / len(chosen) for k in states[0]}
save_file(soup, paths[0] + ".torch-soup.safetensors")
print("RESULT", sorted(chosen), best)
"""


def make_ingredients(workdir: Path, n: int) -> list[str]:
    """``n`` perturbed copies of the model, written once and reused."""
    import ladle
    import torch

    scope: dict = {}
    code = compile(COMMON.replace("paths = sys.argv[1:]", ""), "<common>", "exec")
    exec(code, scope)  # noqa: S102 - our own model definition, shared with the children
    build = scope["build"]
    base = build()
    paths = []
    for i in range(n):
        path = workdir / f"ingredient{i}.safetensors"
        if not path.exists():
            m = build()
            g = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p, q in zip(m.parameters(), base.parameters()):
                    p.copy_(q + (0.002 * (i + 1)) * torch.randn(p.shape, generator=g))
            ladle.save(m, path)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="bench-work/greedy")
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = make_ingredients(workdir, args.n)
    env = None
    results = {}
    for name, code in (("ladle", LADLE), ("torch-in-memory", TORCH)):
        r = run_measured([sys.executable, "-c", code, *paths], env=env)
        if r["rc"] != 0:
            raise SystemExit(f"{name} failed:\n{r['stderr'][-3000:]}")
        line = [x for x in r["stdout"].splitlines() if x.startswith("RESULT")][-1]
        results[name] = {"wall_s": round(r["wall_s"], 2),
                         "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20),
                         "peak_rss_anon_mib": round(r["peak_rss_anon_bytes"] / 2**20),
                         "result": line}
        print(name, json.dumps(results[name]), flush=True)
    a, b = results["ladle"], results["torch-in-memory"]
    summary = {"n_ingredients": args.n, "params": DEPTH * (WIDTH * WIDTH + WIDTH),
               "ingredient_mib": round(Path(paths[0]).stat().st_size / 2**20), **results,
               "rss_ratio_torch_over_ladle": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2),
               "wall_ratio_torch_over_ladle": round(b["wall_s"] / a["wall_s"], 2)}
    (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
