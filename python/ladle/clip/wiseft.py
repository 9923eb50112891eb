"""The WiSE-FT pipeline (SPEC §1.3): zero-shot θ0 → fine-tune θ1 → α sweep with θα
streamed into a live classifier by :func:`ladle.wiseft_sweep` → the output-space
ensemble for comparison → α-selection rules → results JSONL, a PNG of ID vs OOD
accuracy (logit axes, endpoints, curves, effective-robustness baseline) and a
Markdown table.

Example:
    >>> res = run_wiseft(load_preset("demo"), "runs/wiseft")      # doctest: +SKIP
    >>> res["report"]                                              # doctest: +SKIP
    PosixPath('runs/wiseft/wiseft_report.md')
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import FinetuneConfig
from .experiment import Experiment


def sweep_curve(exp: Experiment, theta0: Any, theta1: Any, alphas: list[float], *,
                label: str = "wiseft", progress: bool = False,
                keep_logits: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Evaluate θα for every α with :func:`ladle.wiseft_sweep` (streamed in place).

    Args:
        keep_logits: α's whose logits (every evaluation set) to keep; the evaluation
            computes them anyway, so keeping them is free.

    Returns:
        One dict per α: ``{"alpha": α, "acc": {set: accuracy, ...}}``, plus
        ``"logits": {set: tensor}`` for the α's in ``keep_logits``.
    """
    import ladle

    keep = {float(a) for a in keep_logits}
    logits: dict[float, Any] = {}
    pending = iter(alphas)  # wiseft_sweep evaluates the α's one by one, in order

    def evaluate(module: Any) -> Any:
        a = float(next(pending))
        if a not in keep:
            return exp.evaluate(module)
        acc, logits[a] = exp.evaluate(module, return_logits=True)
        return acc

    target = exp.fresh_model(exp.eval_device)
    points = ladle.wiseft_sweep(target, theta0, theta1, alphas, evaluate=evaluate,
                                progress=progress)
    out = []
    for p in points:
        exp.log.append(f"{label}/alpha", alpha=p.alpha, acc=p.score, seconds=p.seconds)
        out.append({"alpha": p.alpha, "acc": p.score})
        if p.alpha in logits:
            out[-1]["logits"] = logits[p.alpha]
    return out


# Output-space baselines of the WiSE-FT pipeline (config ``ensembles``), the first drawn
# as "output-space ensemble".
ENSEMBLE_KINDS = ("logit", "softmax", "random")
ENSEMBLE_LABELS = {"logit": "logit ensemble", "softmax": "softmax ensemble",
                   "random": "random interpolation"}


def ensemble_curve(exp: Experiment, theta0: Any, theta1: Any, alphas: list[float], *,
                   kind: str = "logit",
                   endpoint_logits: tuple[Any, Any] | None = None) -> list[dict[str, Any]]:
    """Output-space ensemble (1 − α)·f(x, θ0) + α·f(x, θ1) for every α (two passes);
    ``kind`` as :func:`~ladle.clip.evaluate.output_ensemble`.

    Args:
        endpoint_logits: the two endpoints' logits per evaluation set when already
            computed (e.g. by the sweep at α = 0 and 1, which are bit-exact endpoints);
            skips the two passes.

    Returns:
        One dict per α, as :func:`sweep_curve`.
    """
    import ladle

    from .evaluate import evaluate_logits, output_ensemble

    if endpoint_logits is None:
        model = exp.fresh_model()
        logits = []
        for theta in (theta0, theta1):
            ladle.load_into(model, [theta])
            logits.append(exp.evaluate(model, return_logits=True)[1])
    else:
        logits = list(endpoint_logits)
    out = []
    for a in alphas:
        mixed = {n: output_ensemble(logits[0][n], logits[1][n], a, kind=kind)
                 for n in exp.eval_sets}
        acc = evaluate_logits(mixed, exp.eval_sets, id_name="id")
        exp.log.append(f"{kind}-ensemble/alpha", alpha=a, acc=acc)
        out.append({"alpha": a, "acc": acc})
    return out


def fisher_curve(exp: Experiment, theta0: Any, theta1: Any, alphas: list[float],
                 out: Path, *, examples: int | None = 256, floor: float = 1e-8,
                 sample: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Fisher-weighted WiSE-FT (:mod:`.fisher`): diagonal Fishers of θ0 and θ1 on the
    training set (saved as ``fisher0/1.safetensors``), then the merged model per α."""
    import ladle

    from .fisher import diagonal_fisher, fisher_merge_into, save_fisher

    model = exp.fresh_model()
    paths = []
    for k, theta in enumerate((theta0, theta1)):
        ladle.load_into(model, [theta])
        paths.append(save_fisher(diagonal_fisher(model, exp.train, examples=examples,
                                                 sample=sample, seed=seed + k),
                                 out / f"fisher{k}.safetensors"))
    curve = []
    for a in alphas:
        fisher_merge_into(model, theta0, theta1, paths[0], paths[1], a, floor=floor)
        acc = exp.evaluate(model)
        exp.log.append("fisher-wiseft/alpha", alpha=a, acc=acc)
        curve.append({"alpha": a, "acc": acc})
    return curve


def _flyp(exp: Experiment, cfg: FinetuneConfig, config: dict[str, Any],
          out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """θ1 by FLYP, saved as ``finetune/flyp.safetensors`` (no per-epoch evaluations)."""
    import ladle

    from .flyp import flyp_finetune
    from .templates import get_templates

    model, _ = flyp_finetune(exp.clip, exp.tokenizer, exp.train, exp.classnames,
                                   get_templates(config.get("templates", "imagenet")), cfg,
                                   log=exp.log)
    (out / "finetune").mkdir(parents=True, exist_ok=True)
    path = ladle.save(model, out / "finetune" / "flyp.safetensors", overwrite=True)
    return Path(path), []


def select_alphas(curve: list[dict[str, Any]]) -> dict[str, float]:
    """The α-selection rules of SPEC §1.3 via ladle's selection API.

    Returns:
        ``{"fixed-0.5", "best-heldout", "best-ood-no-id-loss", "best-id-no-ood-loss"}``
        (the first only when 0.5 is on the grid).
    """
    import ladle

    alphas = [p["alpha"] for p in curve]
    ho = [p["acc"]["heldout"] for p in curve]
    idv = [p["acc"]["id"] for p in curve]
    ood = [p["acc"]["avg_ood"] for p in curve]
    rules = {"best-heldout": ladle.best_on_heldout(alphas, ho)}
    if 0.0 in alphas and 1.0 in alphas:
        rules["best-ood-no-id-loss"] = ladle.best_ood_without_id_loss(alphas, idv, ood)
        rules["best-id-no-ood-loss"] = ladle.best_id_without_ood_loss(alphas, idv, ood)
    if 0.5 in alphas:
        rules["fixed-0.5"] = ladle.fixed_alpha(0.5)
    return rules


def run_wiseft(config: dict[str, Any], out_dir: str | os.PathLike, *,
               experiment: Experiment | None = None, finetuned: Any = None,
               epochs: list[dict[str, Any]] | None = None, fit: Any = None,
               progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run the whole WiSE-FT pipeline.

    Args:
        config: a preset (``wiseft-e2e``, ``wiseft-lc``, ``demo``) or a user config.
        out_dir: results directory: ``zeroshot.safetensors``, ``finetune/epoch_*.safetensors``,
            ``results.jsonl``, ``wiseft.png``, ``wiseft_report.md``.
        experiment: a prepared :class:`Experiment` (reuses model and data).
        finetuned: an existing θ1 (skips fine-tuning).
        epochs: per-epoch accuracies of that run (``{"epoch", "acc"}``), for the plot.
        fit: an effective-robustness baseline (default: fit on the epoch checkpoints
            when there are at least two).
        progress: progress bars.
        quiet: no console summary.

    Returns:
        ``{"curve", "ensemble", "ensembles", "selection", "zeroshot", "finetuned",
        "epochs", "logits", "report", "plot"}`` (``ensembles``: kind -> curve for the
        config's ``ensembles``, default logit, softmax and random interpolation;
        ``ensemble`` is the first); ``logits`` maps α ∈ {0, 0.5, 1} (those on the
        grid) to the logits of every evaluation set; ``fisher`` is the Fisher-weighted
        curve when the config has ``"fisher": {"examples", "floor", "sample"}``.
        A ``finetune.mode`` of ``flyp`` fine-tunes with FLYP (:mod:`.flyp`).

    Example:
        >>> run_wiseft(load_preset("wiseft-lc"), "out/")           # doctest: +SKIP
    """
    from .plots import plot_wiseft
    from .report import wiseft_markdown

    out = Path(out_dir)
    exp = experiment or Experiment.from_config(config, out)
    cfg = FinetuneConfig.from_dict({**config.get("finetune", {}), "name": "wiseft-ft"})
    epochs = list(epochs or [])
    if finetuned is None and cfg.mode == "flyp":
        finetuned, epochs = _flyp(exp, cfg, config, out)
    elif finetuned is None:
        from .finetune import finetune

        model = copy.deepcopy(exp.zeroshot)
        res = finetune(model, exp.train, cfg, eval_sets=exp.eval_sets, id_name="id",
                       out_dir=out / "finetune", log=exp.log, progress=progress)
        finetuned = res.final
        epochs = [{"epoch": h["epoch"], "acc": h["acc"]} for h in res.history if "acc" in h]
    alphas = [float(a) for a in config.get("alphas", [round(0.1 * i, 1) for i in range(11)])]
    # Keep the logits the analyses reuse: both endpoints (which also spare the output
    # ensemble its two passes) and α = 0.5, the papers' default mix.
    curve = sweep_curve(exp, exp.theta0, finetuned, alphas, progress=progress,
                        keep_logits=(0.0, 0.5, 1.0))
    logits = {p["alpha"]: p.pop("logits") for p in curve if "logits" in p}
    # Output-space baselines (SPEC §1.4); with the endpoints' logits kept they cost no
    # evaluation pass.
    endpoints = (logits[0.0], logits[1.0]) if {0.0, 1.0} <= set(logits) else None
    ensembles = {kind: ensemble_curve(exp, exp.theta0, finetuned, alphas, kind=kind,
                                      endpoint_logits=endpoints)
                 for kind in config.get("ensembles", ENSEMBLE_KINDS)}
    ens = next(iter(ensembles.values()), [])
    selection = select_alphas(curve)
    exp.log.append("wiseft/selection", **{k.replace("-", "_"): v for k, v in selection.items()})
    if fit is None and len(epochs) >= 2:
        from .robustness import fit_logit_linear

        fit = fit_logit_linear([e["acc"]["id"] for e in epochs],
                               [e["acc"]["avg_ood"] for e in epochs])
    others = {ENSEMBLE_LABELS[k]: c for k, c in list(ensembles.items())[1:]}
    fisher = None
    if config.get("fisher"):
        fisher = fisher_curve(exp, exp.theta0, finetuned, alphas, out, **config["fisher"])
        others["Fisher-weighted WiSE-FT"] = fisher
    plot = plot_wiseft(curve, out / "wiseft.png", ensemble=ens, epochs=epochs, fit=fit,
                       shift_names=list(exp.shifts), extra=others,
                       title=config.get("title", "WiSE-FT"))
    report = out / "wiseft_report.md"
    report.write_text(wiseft_markdown(curve, ensembles, selection, exp, cfg, plot.name))
    result = {"curve": curve, "ensemble": ens, "ensembles": ensembles,
              "selection": selection, "epochs": epochs,
              "zeroshot": exp.theta0, "finetuned": finetuned, "logits": logits,
              "report": report, "plot": plot, "fisher": fisher}
    if not quiet:
        print(f"WiSE-FT: report {report}, plot {plot}")
    return result
