"""Markdown tables for the pipelines' reports (accuracies in %)."""

from __future__ import annotations

from typing import Any


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def acc_table(rows: list[tuple[str, dict[str, Any]]], shift_names: list[str], *,
              bold_best: bool = True) -> str:
    """A Markdown table: label | held-out | ID | each shift | avg OOD | avg ID+OOD.

    Example:
        >>> print(acc_table([("zs", {"id": .5, "avg_ood": .4, "avg_id_ood": .45})], []))
        | model | ID | avg OOD | avg (ID, OOD) |
        |---|---|---|---|
        | zs | **50.0** | **40.0** | **45.0** |
    """
    cols = (["heldout"] if any("heldout" in r for _, r in rows) else []) + ["id"] + list(
        shift_names) + ["avg_ood", "avg_id_ood"]
    names = {"heldout": "held-out", "id": "ID", "avg_ood": "avg OOD",
             "avg_id_ood": "avg (ID, OOD)"}
    best = {c: max(r.get(c, float("-inf")) for _, r in rows) for c in cols}
    lines = ["| model | " + " | ".join(names.get(c, c) for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label, r in rows:
        cells = []
        for c in cols:
            if c not in r:
                cells.append("")
                continue
            s = _pct(r[c])
            cells.append(f"**{s}**" if bold_best and r[c] == best[c] else s)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wiseft_markdown(curve: list[dict[str, Any]], ensemble: list[dict[str, Any]],
                    selection: dict[str, float], exp: Any, cfg: Any, plot_name: str) -> str:
    """The WiSE-FT report: set-up, the α table, the output-ensemble table, selections."""
    shifts = list(exp.shifts)
    zs, ft = curve[0]["acc"], curve[-1]["acc"]
    best = max(curve, key=lambda p: p["acc"]["avg_ood"])
    lines = [
        "# WiSE-FT", "",
        f"Model `{exp.config.get('model', {}).get('name', '?')}`, fine-tuning mode "
        f"`{cfg.mode}` ({cfg.epochs} epochs, lr {cfg.lr:g}, batch {cfg.batch_size}, "
        f"wd {cfg.weight_decay:g}, aug {cfg.aug}). Train {len(exp.train)} / held-out "
        f"{len(exp.heldout)} (seed {exp.split['seed']}) / ID test {len(exp.test)}; shifts: "
        + ", ".join(f"{n} ({len(d)})" for n, d in exp.shifts.items()) + ".", "",
        f"![WiSE-FT]({plot_name})", "",
        "## θα = (1 − α)·θ0 + α·θ1 (weight space, streamed by `ladle.wiseft_sweep`)", "",
        acc_table([(f"α = {p['alpha']:g}", p["acc"]) for p in curve], shifts), "",
        "## Output-space ensemble (1 − α)·f(x, θ0) + α·f(x, θ1)", "",
        acc_table([(f"α = {p['alpha']:g}", p["acc"]) for p in ensemble], shifts), "",
        "## α selection", "",
        "| rule | α | ID | avg OOD |", "|---|---|---|---|",
    ]
    by_alpha = {p["alpha"]: p["acc"] for p in curve}
    for rule, a in selection.items():
        lines.append(f"| {rule} | {a:g} | {_pct(by_alpha[a]['id'])} | "
                     f"{_pct(by_alpha[a]['avg_ood'])} |")
    above = best["acc"]["avg_ood"] > max(zs["avg_ood"], ft["avg_ood"])
    lines += ["", "## Does the effect reproduce?", "",
              (f"- Zero-shot (α=0): ID {_pct(zs['id'])}, avg OOD {_pct(zs['avg_ood'])}; "
              f"fine-tuned (α=1): ID {_pct(ft['id'])}, avg OOD {_pct(ft['avg_ood'])}."),
              f"- Best avg OOD on the grid: α = {best['alpha']:g} with "
              f"{_pct(best['acc']['avg_ood'])} (ID {_pct(best['acc']['id'])}) — "
              + ("**above both endpoints**." if above else "**not above both endpoints**."),
              ""]
    return "\n".join(lines)


def soups_markdown(methods: dict[str, dict[str, Any]], runs: list[dict[str, Any]], greedy: Any,
                   exp: Any, fit: Any, rho: dict[str, float], soup_curve: list[dict[str, Any]],
                   single_curve: list[dict[str, Any]], plot_name: str) -> str:
    """The soup report: ingredients, methods vs best single, greedy choices, ρ."""
    shifts = list(exp.shifts)
    lines = ["# Model soups", "",
             (f"{len(runs)} fine-tuned models from the same θ0; held-out {len(exp.heldout)} "
             f"examples carved from the training set (seed {exp.split['seed']})."), "",
             f"![soups]({plot_name})", "", "## Methods", "",
             acc_table(list(methods.items()), shifts), "",
             ("Effective robustness ρ (avg OOD above the logit-linear fit over every "
             f"fine-tuned model and epoch checkpoint, n = {fit.n}; slope {fit.a:.2f}, "
             f"intercept {fit.b:.2f}):"), "",
             "| method | ρ (pp) |", "|---|---|"]
    lines += [f"| {k} | {100 * v:+.1f} |" for k, v in rho.items()]
    lines += ["", "## Ingredients", "",
              acc_table([(f"{i}: {r['name']}" + (" ✓" if greedy.counts[i] else ""), r["acc"])
                         for i, r in enumerate(runs)], shifts, bold_best=False), "",
              f"Greedy soup kept {len(greedy.selected)} of {len(runs)} (✓).", "",
              "## WiSE-FT toward θ0 from the greedy soup and from the best single model", "",
              acc_table([(f"soup α = {p['alpha']:g}", p["acc"]) for p in soup_curve]
                        + [(f"single α = {p['alpha']:g}", p["acc"]) for p in single_curve],
                        shifts), ""]
    g, b = methods["greedy soup"], methods["best single"]
    lines += ["## Does the effect reproduce?", "",
              (f"- Greedy soup vs best single (chosen on held-out): ID {100 * g['id']:.1f} vs "
              f"{100 * b['id']:.1f}, avg OOD {100 * g['avg_ood']:.1f} vs "
              f"{100 * b['avg_ood']:.1f}, held-out {100 * g['heldout']:.1f} vs "
              f"{100 * b['heldout']:.1f}."), ""]
    return "\n".join(lines)
