"""The papers' cheap analyses on the harness's own outputs (SPEC §1.5, §1.6), run by
the demo after WiSE-FT and the soups: prediction diversity between the zero-shot and
fine-tuned models, linear mode connectivity along the WiSE-FT sweep, the angle φ
between fine-tuned ingredients (streamed from their safetensors) and calibration
before and after temperature scaling. Everything reuses logits the pipelines already
computed; the new evaluations, all on the held-out split, are each ingredient pair's
midpoint (interpolation advantage against φ, Model soups Fig. 3) and the soups of the
two best ingredients along α (the soup-vs-ensemble estimate, Model soups §4).

Example:
    >>> res = run_analyses(exp, wise, soups)                       # doctest: +SKIP
    >>> res["diversity"]["id"]["pd"]                               # doctest: +SKIP
    0.031
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.calibration import expected_calibration_error, fit_temperature
from ..analysis.connectivity import connectivity_report
from ..analysis.diversity import confidence_margin, diversity_report, override_analysis
from ..analysis.geometry import angle_from_deltas, pairwise_interpolation_advantage, streamed_gram
from ..analysis.soup_vs_ensemble import module_predict, soup_ensemble_gap
from .data import ImageSet

Logits = Mapping[str, Any]  # evaluation set name -> logits (N, C)


def plain_sets(sets: Mapping[str, ImageSet]) -> dict[str, ImageSet]:
    """The sets whose raw logits are a distribution over their labels (no class subset
    or class map), the only ones softmax-based measures make sense on."""
    return {n: d for n, d in sets.items() if not d.class_subset and not d.class_map}


def diversity(zs: Logits, ft: Logits, sets: Mapping[str, ImageSet],
              mid: Logits | None = None) -> dict[str, dict[str, float]]:
    """PD, CC, KL(zs ‖ ft), CKAC, the confidence margins δ and the override rates at
    α = 0.5 (WiSE-FT App C, §5.1) per set.

    Args:
        zs, ft: zero-shot and fine-tuned logits per set.
        sets: the evaluation sets (labels).
        mid: logits of the α = 0.5 model per set (default: the output-space mix).

    Returns:
        set -> ``pd``, ``cc``, ``kl``, ``ckac``, ``margin_zs``, ``margin_ft``,
        ``disagree_rate``, ``override_rate``, ``overridden_rate``.
    """
    out = {}
    for name, ds in plain_sets(sets).items():
        row = diversity_report(zs[name], ft[name], ds.labels)
        row["margin_zs"] = confidence_margin(zs[name])
        row["margin_ft"] = confidence_margin(ft[name])
        ov = override_analysis(zs[name], ft[name], None if mid is None else mid[name])
        row.update({k: ov[k] for k in ("disagree_rate", "override_rate", "overridden_rate")})
        out[name] = row
    return out


def connectivity(curve: Sequence[Mapping[str, Any]],
                 names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Def. 1 and "beats both endpoints" per dataset along a WiSE-FT curve.

    Args:
        curve: sweep points ``{"alpha", "acc": {set: accuracy}}`` (α = 0 and 1 included).
        names: the accuracy keys to check (datasets, ``avg_ood``).

    Returns:
        ``alphas`` and ``datasets``: name -> :func:`ladle.analysis.connectivity_report`'s
        entry plus ``accs`` (the accuracies along the curve).
    """
    alphas = [p["alpha"] for p in curve]
    curves = {n: [p["acc"][n] for p in curve] for n in names}
    rep = connectivity_report(alphas, curves)
    for n in names:
        rep[n]["accs"] = curves[n]
    return {"alphas": alphas, "datasets": rep}


def ingredient_angles(theta0: Any, ingredients: Sequence[Any], labels: Sequence[str], *,
                      threads: int = 0) -> dict[str, Any]:
    """Pairwise φ between θi − θ0 over weight matrices without gains (MS §3.2), from one
    streamed Gram matrix of θ0 and every ingredient (no state dict in memory).

    Returns:
        ``labels``, ``phi`` (k × k degrees, 0 on the diagonal), ``norms`` (‖θi − θ0‖),
        ``n_tensors``, ``n_elems``.
    """
    gram = streamed_gram([theta0, *ingredients], threads=threads)
    names = gram.select()  # the same default selection as ladle.analysis.angle()
    d = gram.deltas(names)
    k = len(ingredients)
    phi = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            phi[i, j] = phi[j, i] = angle_from_deltas(d[np.ix_([i, j], [i, j])])
    return {"labels": list(labels), "phi": phi, "norms": np.sqrt(np.diag(d)),
            "n_tensors": len(names),
            "n_elems": int(sum(int(np.prod(gram.shapes[n])) for n in names))}


def ingredient_advantages(exp: Any, ingredients: Sequence[Any]) -> dict[str, Any]:
    """Held-out interpolation advantage of every pair of ingredients (Model soups Fig. 3:
    Acc(½θi + ½θj) − ½(Acc(θi) + Acc(θj))), each model streamed into one classifier.

    Returns:
        ``accs`` (k) and ``advantage`` (k × k), as fractions of the held-out split.
    """
    from .evaluate import accuracy, predict

    def heldout_acc(model: Any) -> float:
        return accuracy(predict(model, exp.heldout), exp.heldout)

    r = pairwise_interpolation_advantage(exp.fresh_model(), ingredients, heldout_acc)
    return {"accs": r["accs"], "advantage": r["advantage"]}


def soup_vs_ensemble(exp: Any, theta1: Any, theta2: Any,
                     alphas: Sequence[float] = (0.25, 0.5, 0.75)) -> list[dict[str, float]]:
    """Model soups §4: the measured held-out loss gap between the soup
    (1 − α)θ1 + αθ2 and the logit ensemble of θ1 and θ2, next to its analytic
    estimate, per α. Each θ_α (and the finite-difference points α ± h) is streamed into
    one classifier and evaluated on the held-out split."""
    from .evaluate import predict

    forward = module_predict(exp.fresh_model(), theta1, theta2,
                             lambda m: predict(m, exp.heldout))
    return soup_ensemble_gap(forward, exp.heldout.labels, alphas)


def calibration(models: Mapping[str, Logits], sets: Mapping[str, ImageSet],
                heldout: ImageSet, *, fit_on: str = "heldout",
                n_bins: int = 15) -> dict[str, dict[str, Any]]:
    """ECE (equal-mass bins) before and after temperature scaling, T fitted on the
    held-out split of each model (MS §5) and applied to every other set.

    Args:
        models: label -> logits per set (including ``fit_on``).
        sets: sets to report (the fitting set is left out).
        heldout: the set T is fitted on.

    Returns:
        label -> ``temperature`` and, per set, ``{"ece", "ece_scaled"}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for label, logits in models.items():
        t = fit_temperature(logits[fit_on], heldout.labels)
        row: dict[str, Any] = {"temperature": t}
        for name, ds in plain_sets(sets).items():
            if name == fit_on:
                continue
            f = np.asarray(logits[name], dtype=np.float64)
            row[name] = {"ece": expected_calibration_error(f, ds.labels, n_bins=n_bins,
                                                           from_logits=True),
                         "ece_scaled": expected_calibration_error(f / t, ds.labels,
                                                                  n_bins=n_bins,
                                                                  from_logits=True)}
        out[label] = row
    return out


def calibration_models(wise: Mapping[str, Any], soups: Mapping[str, Any]) -> dict[str, Logits]:
    """The models whose calibration the demo reports, with the logits the pipelines kept:
    zero-shot, fine-tuned, WiSE-FT α = 0.5 (when on the grid), uniform and greedy soup."""
    w = wise["logits"]
    models = {"zero-shot": w[0.0], "fine-tuned": w[1.0]}
    if 0.5 in w:
        models["WiSE-FT α=0.5"] = w[0.5]
    models.update(soups.get("logits", {}))
    return models


def save_logits(models: Mapping[str, Logits], sets: Mapping[str, ImageSet],
                path: Path) -> Path:
    """Every analysed model's logits (keys ``<model>/<set>``) and every set's labels
    (``labels/<set>``) as one safetensors file, so anyone can recompute the numbers
    (the demo's test does)."""
    import ladle

    tensors = {f"{m}/{n}": t.contiguous() for m, logits in models.items()
               for n, t in logits.items()}
    tensors.update({f"labels/{n}": ds.labels.contiguous() for n, ds in sets.items()})
    return ladle.save(tensors, path, overwrite=True)


def run_analyses(exp: Any, wise: Mapping[str, Any], soups: Mapping[str, Any], *,
                 plots: bool = True) -> dict[str, Any]:
    """All four analyses on a finished demo run; logs each to ``results.jsonl``, saves
    the logits (``analysis_logits.safetensors``) and draws the plots.

    Args:
        exp: the :class:`~ladle.clip.experiment.Experiment`.
        wise: :func:`~ladle.clip.wiseft.run_wiseft`'s result (with ``logits``).
        soups: :func:`~ladle.clip.soups.run_soups`'s result.
        plots: write ``connectivity.png``, ``angles.png``, ``soup_gap.png`` and
            ``calibration.png`` to ``exp.out_dir``.

    Returns:
        ``diversity``, ``connectivity``, ``angles`` (with the pairs' held-out
        interpolation advantage), ``soup_gap`` (``pair`` and the rows of
        :func:`soup_vs_ensemble`), ``calibration``, ``plots``
        (file names), ``mid_source`` (what the α = 0.5 model is).
    """
    from .plots import plot_angle_advantage, plot_connectivity, plot_reliability, plot_soup_gap

    out = Path(exp.out_dir)
    w = wise["logits"]
    report_sets = exp.report_sets
    div = diversity(w[0.0], w[1.0], report_sets, w.get(0.5))
    names = list(report_sets) + ["avg_ood"]
    conn = connectivity(wise["curve"], [n for n in names if n in wise["curve"][0]["acc"]])
    runs = soups["runs"]
    angles = ingredient_angles(exp.theta0, [r["final"] for r in runs],
                               [r["name"] for r in runs])
    angles.update(ingredient_advantages(exp, [r["final"] for r in runs]))
    # The soup-vs-ensemble estimate on the two best ingredients (held-out).
    top = sorted(range(len(runs)), key=lambda i: -runs[i]["acc"]["heldout"])[:2]
    gap = {"pair": [runs[i]["name"] for i in top],
           "rows": soup_vs_ensemble(exp, runs[top[0]]["final"], runs[top[1]]["final"])}
    models = calibration_models(wise, soups)
    cal = calibration(models, exp.eval_sets, exp.heldout)
    for name, row in div.items():
        exp.log.append("analysis/diversity", set=name, **row)
    for name, row in conn["datasets"].items():
        exp.log.append("analysis/connectivity", set=name, alphas=conn["alphas"],
                       **{k: row[k] for k in ("lmc", "connected", "beats", "beats_any")})
    exp.log.append("analysis/angles", labels=angles["labels"], phi_degrees=angles["phi"],
                   norms=angles["norms"], heldout_acc=angles["accs"],
                   advantage=angles["advantage"])
    exp.log.append("analysis/soup_vs_ensemble", pair=gap["pair"], rows=gap["rows"])
    for label, row in cal.items():
        exp.log.append("analysis/calibration", model=label, **row)
    save_logits(models, exp.eval_sets, out / "analysis_logits.safetensors")
    files = {}
    if plots:
        files["connectivity"] = plot_connectivity(conn, out / "connectivity.png").name
        files["angles"] = plot_angle_advantage(angles, out / "angles.png").name
        files["soup_gap"] = plot_soup_gap(gap, out / "soup_gap.png").name
        files["calibration"] = plot_reliability(
            models, plain_sets(report_sets), out / "calibration.png",
            temperatures={label: row["temperature"] for label, row in cal.items()}).name
    return {"diversity": div, "connectivity": conn, "angles": angles, "soup_gap": gap,
            "calibration": cal,
            "plots": files,
            "mid_source": "WiSE-FT α=0.5" if 0.5 in w else "output-space mix at α=0.5"}
