"""The model-soup pipeline (SPEC §1.6): a hyperparameter sweep (grid, the paper's
random search, or a list) → N fine-tuned models → uniform / greedy / learned soup vs
the best single model (by held-out accuracy) vs the logit and greedy ensembles, on
ID and shifts — all through ladle's soups API (:func:`ladle.uniform_soup`,
:func:`ladle.greedy_soup`, :func:`ladle.learned_soup`, :func:`ladle.logit_ensemble`,
:func:`ladle.greedy_ensemble`) — plus WiSE-FT of the greedy soup toward θ0
(MS App D), the effective-robustness baseline fit on every fine-tuned model and
epoch checkpoint, a PNG and a Markdown report.

Example:
    >>> res = run_soups(load_preset("demo"), "runs/soups")        # doctest: +SKIP
    >>> res["methods"]["greedy soup"]["avg_ood"]                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from .config import FinetuneConfig, sweep_configs
from .experiment import Experiment
from .loaders import eval_batches
from .robustness import effective_robustness, fit_logit_linear


def train_ingredients(exp: Experiment, configs: list[FinetuneConfig], out: Path, *,
                      progress: bool = True) -> list[dict[str, Any]]:
    """Fine-tune one model per config from θ0; returns per-run records
    ``{"name", "config", "final", "epochs": [{"epoch", "acc"}], "acc"}``."""
    from .finetune import finetune

    runs = []
    for i, cfg in enumerate(configs):
        model = copy.deepcopy(exp.zeroshot)
        res = finetune(model, exp.train, cfg, eval_sets=exp.eval_sets, id_name="id",
                       out_dir=out / "models" / f"run{i:03d}", log=exp.log, progress=progress)
        epochs = [{"epoch": h["epoch"], "acc": h["acc"]} for h in res.history if "acc" in h]
        acc = epochs[-1]["acc"] if epochs else exp.evaluate(model)
        runs.append({"name": cfg.name, "config": cfg.to_dict(), "final": res.final,
                     "epochs": epochs, "acc": acc, "seconds": res.seconds})
        if progress:
            print(f"  [{i + 1}/{len(configs)}] {cfg.name}: held-out {100 * acc['heldout']:.1f}, "
                  f"ID {100 * acc['id']:.1f}, avg OOD {100 * acc['avg_ood']:.1f} "
                  f"({res.seconds:.0f}s)")
    return runs


def _heldout_batches(exp: Experiment, batch_size: int = 256) -> list[tuple[Any, Any]]:
    return [(x, y) for x, y, _ in eval_batches(exp.heldout, batch_size,
                                               exp.zeroshot.preprocess)]


def model_stock_model(exp: Experiment, finetuned: list[Any], out: Path) -> Any:
    """Model Stock for CLIP (Jang et al. 2024): the fine-tuned models' mean pulled
    toward the pre-trained θ0 by t = k·cosθ / ((k − 1)·cosθ + 1) per tensor (θ the
    mean pairwise angle of the deltas), via :func:`ladle.methods.methods.model_stock`;
    saved as ``model_stock.safetensors`` and loaded into a fresh classifier."""
    import ladle
    from ladle.methods.methods import model_stock

    if len(finetuned) < 2:
        raise ValueError(f"model stock needs at least 2 fine-tuned models, got {len(finetuned)}")
    path = out / "model_stock.safetensors"
    model_stock(exp.theta0, finetuned, path, overwrite=True, progress=False)
    model = exp.fresh_model()
    ladle.load_into(model, [path])
    return model


def run_soups(config: dict[str, Any], out_dir: str | os.PathLike, *,
              experiment: Experiment | None = None, runs: list[dict[str, Any]] | None = None,
              progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run the whole soup pipeline.

    Args:
        config: a preset (``soups-vit-b32``, ``demo``) or user config with ``sweep``,
            ``finetune`` (the base config), ``soups`` (which of uniform/greedy/learned/
            model_stock; ``"model_stock": {"runs": 2}`` picks the first runs),
            ``learned_soup`` options and ``alphas`` (WiSE-FT of the greedy soup).
        out_dir: results directory.
        experiment: a prepared :class:`Experiment`.
        runs: already fine-tuned ingredients (skips training; records as returned
            by :func:`train_ingredients`).
        progress: progress output.
        quiet: no console summary.

    Returns:
        ``{"runs", "methods", "greedy", "fit", "effective_robustness", "logits",
        "soup_curve", "single_curve", "report", "plot"}``; ``logits`` maps "uniform soup"
        and "greedy soup" to the logits of every evaluation set.
    """
    import ladle

    from .evaluate import evaluate_logits, predict
    from .plots import plot_soups
    from .report import soups_markdown
    from .wiseft import sweep_curve

    out = Path(out_dir)
    exp = experiment or Experiment.from_config(config, out)
    if runs is None:
        configs = sweep_configs(config["sweep"], config.get("finetune", {}))
        if progress:
            print(f"fine-tuning {len(configs)} models")
        runs = train_ingredients(exp, configs, out, progress=progress)
    paths = [r["final"] for r in runs]
    zs_acc = exp.evaluate(exp.zeroshot)
    methods: dict[str, dict[str, Any]] = {"zero-shot": zs_acc}
    best = max(range(len(runs)), key=lambda i: runs[i]["acc"]["heldout"])
    methods["best single"] = runs[best]["acc"]
    model = exp.fresh_model()

    def heldout_acc(m: Any) -> float:
        from .evaluate import accuracy

        return accuracy(predict(m, exp.heldout), exp.heldout)

    wanted = config.get("soups", ["uniform", "greedy", "learned"])
    logits: dict[str, dict[str, torch.Tensor]] = {}  # soups' logits, for the analyses
    if "uniform" in wanted:
        ladle.uniform_soup(model, paths, heldout_acc, log=exp.log)
        methods["uniform soup"], logits["uniform soup"] = exp.evaluate(model, return_logits=True)
    greedy = ladle.greedy_soup(model, paths, heldout_acc, out=out / "greedy_soup.safetensors",
                               scores=[r["acc"]["heldout"] for r in runs], log=exp.log,
                               overwrite=True)
    methods["greedy soup"], logits["greedy soup"] = exp.evaluate(model, return_logits=True)
    if "learned" in wanted:
        opts = config.get("learned_soup", {})
        learner = exp.fresh_model()
        ladle.learned_soup(learner, paths, _heldout_batches(exp), by_layer=bool(
            opts.get("by_layer", False)), epochs=int(opts.get("epochs", 3)),
            lr=float(opts.get("lr", 0.1)), log=exp.log)
        methods["learned soup"] = exp.evaluate(learner)
    if "model_stock" in wanted:
        methods["model stock"] = exp.evaluate(model_stock_model(
            exp, paths[:int(config.get("model_stock", {}).get("runs", 2))], out))

    # Output-space baselines through ladle's ensembles API; the logits of every set are
    # captured so the chosen ensembles can be reported on ID and shifts too.
    names = list(exp.eval_sets)
    captured: list[dict[str, torch.Tensor]] = []

    def predict_all(m: Any) -> torch.Tensor:
        _, logits = exp.evaluate(m, return_logits=True)
        captured.append(logits)
        return logits["heldout"]

    def score(logits: Any) -> float:
        return float((torch.as_tensor(logits).argmax(1) == exp.heldout.labels).double().mean())

    ladle.logit_ensemble(model, paths, predict_all, score, log=exp.log)
    per_model = captured[:len(paths)]
    methods["logit ensemble"] = evaluate_logits(
        {n: torch.stack([c[n] for c in per_model]).mean(0) for n in names}, exp.eval_sets,
        id_name="id")
    # greedy_ensemble loads the same ingredients in the same order again: hand back the
    # logits already computed for each instead of re-running every evaluation set.
    replay = iter(per_model)
    gens = ladle.greedy_ensemble(model, paths, lambda m: next(replay)["heldout"], score,
                                 log=exp.log)
    w = torch.tensor(gens.counts, dtype=torch.float64)
    methods["greedy ensemble"] = evaluate_logits(
        {n: sum(float(w[i]) * per_model[i][n].double() for i in range(len(paths))) / w.sum()
         for n in names}, exp.eval_sets, id_name="id")

    alphas = [float(a) for a in config.get("soup_alphas", config.get(
        "alphas", [round(0.1 * i, 1) for i in range(11)]))]
    soup_curve = sweep_curve(exp, exp.theta0, greedy.out, alphas, label="wiseft-greedy-soup")
    single_curve = sweep_curve(exp, exp.theta0, paths[best], alphas, label="wiseft-best-single")

    # Effective robustness: baseline line over every model trained only on the ID
    # domain (each fine-tuned model and each of its epoch checkpoints).
    base = [e["acc"] for r in runs for e in r["epochs"]] or [r["acc"] for r in runs]
    fit = fit_logit_linear([a["id"] for a in base], [a["avg_ood"] for a in base])
    rho = {k: effective_robustness(v["id"], v["avg_ood"], fit) for k, v in methods.items()}
    for k, v in methods.items():
        exp.log.append("soups/summary", name=k, acc=v, effective_robustness=rho[k])
    plot = plot_soups({k: v for k, v in methods.items()}, out / "soups.png",
                      individual=[r["acc"] for r in runs],
                      curves={"WiSE-FT: θ0 → greedy soup": soup_curve,
                              "WiSE-FT: θ0 → best single": single_curve}, fit=fit,
                      title=config.get("title", "Model soups"))
    report = out / "soups_report.md"
    report.write_text(soups_markdown(methods, runs, greedy, exp, fit, rho, soup_curve,
                                     single_curve, plot.name))
    if not quiet:
        print(f"soups: report {report}, plot {plot}")
    return {"runs": runs, "methods": methods, "greedy": greedy, "fit": fit,
            "effective_robustness": rho, "logits": logits, "soup_curve": soup_curve,
            "single_curve": single_curve, "report": report, "plot": plot}
