"""Markdown tables for the pipelines' reports (accuracies in %)."""

from __future__ import annotations

from typing import Any

import numpy as np


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


ENSEMBLE_TITLES = {
    "logit": "logit ensemble (1 − α)·f(x, θ0) + α·f(x, θ1)",
    "softmax": "softmax ensemble (1 − α)·softmax f(x, θ0) + α·softmax f(x, θ1)",
    "random": "random interpolation (each example from θ1 with probability α)"}


def wiseft_markdown(curve: list[dict[str, Any]], ensembles: dict[str, list[dict[str, Any]]],
                    selection: dict[str, float], exp: Any, cfg: Any, plot_name: str) -> str:
    """The WiSE-FT report: set-up, the α table, the output-space baselines' tables
    (kind -> curve), selections."""
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
    ]
    for kind, points in ensembles.items():
        lines += [f"## Output-space baseline: {ENSEMBLE_TITLES.get(kind, kind)}", "",
                  acc_table([(f"α = {p['alpha']:g}", p["acc"]) for p in points], shifts), ""]
    lines += [
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


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _alphas(alphas: list[float]) -> str:
    return ", ".join(f"{a:g}" for a in alphas) or "–"


def diversity_markdown(div: dict[str, dict[str, float]], mid_source: str) -> str:
    """Zero-shot vs fine-tuned per set: PD, CC, KL, CKAC (WiSE-FT App C), margins δ and
    who wins the disagreements at α = 0.5 (§5.1)."""
    lines = [("| set | PD (%) | CC | KL (nats) | CKAC | δ zero-shot | δ fine-tuned | "
             "disagree (%) | zero-shot overrides (%) | is overridden (%) |"),
             "|---|" + "---|" * 9]
    for name, r in div.items():
        lines.append(f"| {name} | {_pct(r['pd'])} | {r['cc']:.3f} | {r['kl']:.3f} | "
                     f"{r['ckac']:.3f} | {r['margin_zs']:.2f} | {r['margin_ft']:.2f} | "
                     f"{_pct(r['disagree_rate'])} | {_pct(r['override_rate'])} | "
                     f"{_pct(r['overridden_rate'])} |")
    return "\n".join(lines + [
        "", ("PD: fraction where exactly one model is right; CC: 1 − Cohen's κ of the two "
        "predictions; KL: mean KL(zero-shot ‖ fine-tuned) of the softmaxes; CKAC: 1 − linear "
        "CKA of the logits; δ: mean gap between the two largest logits. Override rates are "
        f"over the disagreements, with the {mid_source} model as the ensemble.")])


def connectivity_markdown(conn: dict[str, Any]) -> str:
    """Per dataset: Def. 1 (θα on or above the endpoints' chord for every α) and the
    interior α's that beat both endpoints (Observation 2)."""
    alphas = conn["alphas"]
    lines = [("| set | α = 0 | α = 1 | Def. 1 holds | α below the chord | α ≥ both endpoints | "
             "best interior α (pp over the better endpoint) |"),
             "|---|" + "---|" * 6]
    for name, r in conn["datasets"].items():
        acc = dict(zip(alphas, r["accs"]))
        below = [a for a, ok in zip(alphas, r["lmc"]) if not ok]
        inner = [a for a in alphas if 0 < a < 1]
        best = max(inner, key=lambda a: acc[a]) if inner else None
        gain = "" if best is None else (
            f"{best:g} ({100 * (acc[best] - max(acc[0.0], acc[1.0])):+.1f})")
        lines.append(f"| {'avg OOD' if name == 'avg_ood' else name} | {_pct(acc[0.0])} | "
                     f"{_pct(acc[1.0])} | {_yes(r['connected'])} | {_alphas(below)} | "
                     f"{_alphas(r['beating_alphas'])} | {gain} |")
    return "\n".join(lines)


def angles_markdown(angles: dict[str, Any]) -> str:
    """φ between every two fine-tuned ingredients' deltas θi − θ0 (Model soups §3.2)."""
    labels = angles["labels"]
    lines = ["| ingredient | ‖θi − θ0‖ | " + " | ".join(str(i) for i in range(len(labels)))
             + " |", "|---|---|" + "---|" * len(labels)]
    for i, label in enumerate(labels):
        cells = ["–" if i == j else f"{angles['phi'][i, j]:.1f}" for j in range(len(labels))]
        lines.append(f"| {i}: {label} | {angles['norms'][i]:.3f} | " + " | ".join(cells) + " |")
    lines += ["", (f"φ in degrees over {angles['n_tensors']} weight matrices "
              f"({angles['n_elems']:,} elements; biases, norms and other gains excluded), from "
              "one streamed Gram matrix of θ0 and the ingredients' safetensors.")]
    if "advantage" in angles:
        lines += ["", advantage_markdown(angles)]
    return "\n".join(lines)


def advantage_markdown(angles: dict[str, Any]) -> str:
    """Pairs by φ with their held-out interpolation advantage (Model soups Fig. 3)."""
    k = len(angles["labels"])
    pairs = sorted(((i, j) for i in range(k) for j in range(i + 1, k)),
                   key=lambda p: angles["phi"][p])
    lines = ["| pair | φ (°) | held-out acc i / j | midpoint | advantage (pp) |",
             "|---|---|---|---|---|"]
    for i, j in pairs:
        a = angles["advantage"][i, j]
        mid = a + 0.5 * (angles["accs"][i] + angles["accs"][j])
        lines.append(f"| {i}-{j} | {angles['phi'][i, j]:.1f} | {_pct(angles['accs'][i])} / "
                     f"{_pct(angles['accs'][j])} | {_pct(mid)} | {100 * a:+.2f} |")
    phi = [angles["phi"][p] for p in pairs]
    adv = [angles["advantage"][p] for p in pairs]
    corr = float(np.corrcoef(phi, adv)[0, 1]) if len(pairs) > 2 else float("nan")
    return "\n".join(lines + ["", (f"Pearson correlation of φ and the advantage over "
                                   f"{len(pairs)} pairs: {corr:+.2f} (Model soups Fig. 3 finds "
                                   "larger angles give larger advantages).")])


def soup_gap_markdown(gap: dict[str, Any]) -> str:
    """Measured soup-vs-ensemble gap next to the analytic estimate (Model soups §4)."""
    lines = [("| α | β | L soup | L ens | measured gap | estimate | d²L/dα² | β²·Var | "
              "err soup (%) | err ens (%) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in gap["rows"]:
        lines.append(f"| {r['alpha']:g} | {r['beta']:.3f} | {r['loss_soup']:.4f} | "
                     f"{r['loss_ens']:.4f} | {r['gap']:+.4f} | {r['estimate']:+.4f} | "
                     f"{r['curvature']:+.4f} | {r['variance']:.4f} | "
                     f"{100 * r['err_soup']:.1f} | {100 * r['err_ens']:.1f} |")
    agree = sum((r["gap"] > 0) == (r["estimate"] > 0) for r in gap["rows"])
    return "\n".join(lines + ["", (
        f"Soup (1 − α)·θa + α·θb of the two best ingredients by held-out accuracy (θa = "
        f"{gap['pair'][0]}, θb = {gap['pair'][1]}) vs their logit ensemble, on the held-out "
        "split; estimate = α(1 − α)/2 · (−d²L/dα² + β²·E Var[Δf]), β fitted per α, the "
        f"curvature by central differences (h = 0.05). The estimate's sign matches the "
        f"measured gap at {agree} of {len(gap['rows'])} α (it is a first-order "
        "approximation).")])


def calibration_markdown(cal: dict[str, dict[str, Any]]) -> str:
    """ECE (%) per model and set, before → after temperature scaling (T fitted on the
    held-out split), as in Model soups §5."""
    sets = [n for n in next(iter(cal.values())) if n != "temperature"]
    lines = ["| model | T (held-out) | " + " | ".join(sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for label, r in cal.items():
        cells = [f"{100 * r[n]['ece']:.2f} → {100 * r[n]['ece_scaled']:.2f}" for n in sets]
        lines.append(f"| {label} | {r['temperature']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [
        "", "ECE in %, 15 equal-mass bins; temperature scaling leaves accuracy unchanged."])


def _image(plots: dict[str, str], name: str) -> list[str]:
    """The Markdown lines embedding plot ``name`` when it was drawn."""
    return [f"![{name}]({plots[name]})", ""] if name in plots else []


def analyses_markdown(res: dict[str, Any] | None, *, seconds: float | None = None) -> str:
    """The demo report's analysis sections (see :func:`ladle.clip.analyses.run_analyses`).

    Args:
        res: ``run_analyses``' result; None when they could not run.
        seconds: how long the analyses took (stated when given).
    """
    if res is None:
        return ("## Analyses\n\nSkipped: they need α = 0 and α = 1 on the WiSE-FT grid "
                "(`alphas`).\n")
    plots = res.get("plots", {})
    conn = res["connectivity"]["datasets"]
    held = [("avg OOD" if n == "avg_ood" else n) for n, r in conn.items() if r["connected"]]
    above = [("avg OOD" if n == "avg_ood" else n) for n, r in conn.items() if r["beats_any"]]
    took = "" if seconds is None else f" ({seconds:.1f}s)"
    lines = ["## Analyses", "",
             ("From the logits the pipelines already computed, the saved checkpoints and "
             f"held-out evaluations of interpolated ingredients{took}; the logits are in `analysis_logits.safetensors`, every number in "
             "`results.jsonl` (`analysis/*`)."), "",
             "### Prediction diversity: zero-shot vs fine-tuned (WiSE-FT App C)", "",
             diversity_markdown(res["diversity"], res["mid_source"]), "",
             "### Linear mode connectivity along the WiSE-FT sweep (WiSE-FT Def. 1)", "",
             connectivity_markdown(res["connectivity"]), "",
             (f"Def. 1 holds on {len(held)} of {len(conn)} ({', '.join(held) or 'none'}); an "
             "interior α is at or above both endpoints on "
             f"{', '.join(above) or 'none'} (WiSE-FT observes Def. 1 on ImageNet and all five "
             "shifts)."), ""]
    lines += _image(plots, "connectivity")
    lines += ["### Angle between fine-tuned ingredients (Model soups §3.2)", "",
              angles_markdown(res["angles"]), ""]
    lines += _image(plots, "angles")
    if "soup_gap" in res:
        lines += ["### Soup vs ensemble: measured gap and analytic estimate (Model soups §4)",
                  "", soup_gap_markdown(res["soup_gap"]), ""]
        lines += _image(plots, "soup_gap")
    lines += ["### Calibration before and after temperature scaling (Model soups §5)", "",
              calibration_markdown(res["calibration"]), ""]
    lines += _image(plots, "calibration")
    return "\n".join(lines)
