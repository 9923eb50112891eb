"""The built-in offline demo: pre-train a tiny CLIP contrastively on captioned digits
from several domains (MNIST, scikit-learn scans, matplotlib-font renderings,
code-generated corruptions), then run WiSE-FT and the soup pipeline with MNIST as the
fine-tuning (ID) domain and the other domains as distribution shifts, and write one
Markdown report with the plots. Honest by construction: the report states whether
the papers' effects (OOD accuracy at an intermediate α above both endpoints; greedy
soup above the best single model) reproduce in this run.

Example:
    $ ladle clip demo --out clip-demo
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def pretrained_tiny_clip(cfg: dict[str, Any], cache_dir: Path,
                         progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Build the digit domains and the contrastively pre-trained tiny CLIP, reusing
    ``cache_dir/digits.pt`` and ``cache_dir/<model>-pretrained.safetensors`` when present
    (the cache key includes the pre-training options)."""
    import ladle

    from .digits import demo_splits
    from .models import create_clip, load_clip_weights
    from .pretrain import pretrain_clip

    cache_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.get("data", {})
    splits = demo_splits(int(data.get("seed", 0)),
                         fonts_per_class=int(data.get("fonts_per_class", 150)),
                         cache=cache_dir / f"digits-{data.get('seed', 0)}-"
                                           f"{data.get('fonts_per_class', 150)}.pt")
    if data.get("pretrain_limit"):
        n = min(int(data["pretrain_limit"]), len(splits["pretrain"]))
        splits["pretrain"] = splits["pretrain"].subset(range(n))
    m = cfg["model"]
    opts = dict(cfg.get("pretrain", {}))
    key = "-".join(f"{k}{v}" for k, v in sorted(opts.items())) + f"-n{len(splits['pretrain'])}"
    weights = cache_dir / f"{m['name']}-pretrained-{key}.safetensors"
    import torch

    torch.manual_seed(int(opts.get("seed", 0)))  # deterministic initialisation
    clip, tok = create_clip(m["name"], config=m.get("config"))
    if weights.is_file():
        load_clip_weights(clip, weights)
    else:
        if progress:
            print(f"pre-training {m['name']} contrastively on {len(splits['pretrain'])} "
                  f"captioned digits ({opts.get('epochs', 8)} epochs)")
        info = pretrain_clip(clip, tok, splits["pretrain"], progress=progress, **opts)
        ladle.save(clip, weights, overwrite=True)
        (weights.with_suffix(".json")).write_text(json.dumps(info))
    return clip, tok, splits


def run_clip_demo(out: Path, *, config: str = "demo", overrides: list[str] | None = None,
                  progress: bool = True) -> int:
    """Run the demo end to end; prints and returns 0 with the report's path.

    Args:
        out: results directory (``report.md``, ``wiseft.png``, ``soups.png``,
            ``connectivity.png``, ``calibration.png``, JSONL, the analysed logits).
        config: preset name or file.
        overrides: ``key=value`` config overrides.
        progress: progress bars.

    Returns:
        The exit status.
    """
    import torch

    from .analyses import run_analyses
    from .config import load_preset, override_config
    from .experiment import Experiment, accuracy_summary
    from .models import n_params
    from .report import analyses_markdown
    from .soups import run_soups
    from .wiseft import run_wiseft

    t0 = time.perf_counter()
    cfg = override_config(load_preset(config), overrides or [])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    out.mkdir(parents=True, exist_ok=True)
    clip, tok, splits = pretrained_tiny_clip(cfg, Path(cfg.get("cache_dir", out / "cache")),
                                             progress)
    t_pre = time.perf_counter() - t0
    exp = Experiment.from_config(cfg, out, clip=clip, tokenizer=tok, builtin=splits)
    shifts = list(exp.shifts)
    zs = exp.evaluate(exp.zeroshot)
    print(f"zero-shot tiny CLIP ({n_params(clip) / 1e6:.2f}M params): "
          f"{accuracy_summary(zs, shifts)}")
    soups = run_soups(cfg, out, experiment=exp, progress=progress, quiet=True)
    # WiSE-FT on the sweep's first run (the standard recipe of the preset).
    wise = run_wiseft(cfg, out, experiment=exp, finetuned=soups["runs"][0]["final"],
                      epochs=soups["runs"][0]["epochs"], fit=soups["fit"], progress=False,
                      quiet=True)
    t_an = time.perf_counter()
    # The analyses compare the sweep's endpoints, so they need α = 0 and 1 on the grid.
    analyses = (run_analyses(exp, wise, soups) if {0.0, 1.0} <= set(wise["logits"])
                else None)
    t_an = time.perf_counter() - t_an
    seconds = time.perf_counter() - t0
    report = out / "report.md"
    report.write_text(_demo_report(cfg, exp, clip, zs, wise, soups, seconds, t_pre)
                      + analyses_markdown(analyses, seconds=t_an))
    print(_summary(wise, soups))
    print(f"report: {report} ({seconds:.0f}s)")
    return 0


def _summary(wise: dict[str, Any], soups: dict[str, Any]) -> str:
    curve = wise["curve"]
    zs, ft = curve[0]["acc"], curve[-1]["acc"]
    best = max(curve, key=lambda p: p["acc"]["avg_ood"])
    g, b = soups["methods"]["greedy soup"], soups["methods"]["best single"]
    return (f"WiSE-FT: α=0 ID {100 * zs['id']:.1f} OOD {100 * zs['avg_ood']:.1f} | α=1 ID "
            f"{100 * ft['id']:.1f} OOD {100 * ft['avg_ood']:.1f} | best α={best['alpha']:g} ID "
            f"{100 * best['acc']['id']:.1f} OOD {100 * best['acc']['avg_ood']:.1f}\n"
            f"greedy soup ({len(soups['greedy'].selected)} of {len(soups['runs'])}): ID "
            f"{100 * g['id']:.1f} OOD {100 * g['avg_ood']:.1f} vs best single ID "
            f"{100 * b['id']:.1f} OOD {100 * b['avg_ood']:.1f}")


def _rule_a(wise: dict[str, Any], curve: list[dict[str, Any]]) -> str:
    """W1's rule (a) and the avg(ID, OOD) optimum, in one bullet."""
    by = {p["alpha"]: p["acc"] for p in curve}
    a = wise["selection"].get("best-ood-no-id-loss")
    z, f = curve[0]["acc"], curve[-1]["acc"]
    both = max(curve, key=lambda p: p["acc"]["avg_id_ood"])
    text = ""
    if a is not None:
        text = (f"- Rule (a) (best OOD without losing ID vs the fine-tuned model): α = {a:g}: "
                f"ID {100 * by[a]['id']:.1f} vs {100 * f['id']:.1f}, avg OOD "
                f"{100 * by[a]['avg_ood']:.1f} vs {100 * f['avg_ood']:.1f} "
                f"({100 * (by[a]['avg_ood'] - f['avg_ood']):+.1f} pp). ")
    return text + (f"Best avg(ID, OOD): α = {both['alpha']:g} with "
                   f"{100 * both['acc']['avg_id_ood']:.1f} vs zero-shot "
                   f"{100 * z['avg_id_ood']:.1f} and fine-tuned {100 * f['avg_id_ood']:.1f}.")


def _demo_report(cfg: dict[str, Any], exp: Any, clip: Any, zs: dict[str, Any],
                 wise: dict[str, Any], soups: dict[str, Any], seconds: float,
                 t_pre: float) -> str:
    from .models import n_params
    from .report import acc_table

    curve = wise["curve"]
    z, f = curve[0]["acc"], curve[-1]["acc"]
    best = max(curve, key=lambda p: p["acc"]["avg_ood"])
    wise_ok = best["acc"]["avg_ood"] > max(z["avg_ood"], f["avg_ood"])
    mid = [p for p in curve if 0 < p["alpha"] < 1]
    g, b = soups["methods"]["greedy soup"], soups["methods"]["best single"]
    soup_ok_id = g["id"] > b["id"]
    soup_ok_ood = g["avg_ood"] > b["avg_ood"]
    shifts = list(exp.shifts)
    return "\n".join([
        "# ladle CLIP demo (offline, tiny CLIP on digits)", "",
        f"Tiny CLIP `{cfg['model']['name']}`: {n_params(clip) / 1e6:.2f}M parameters "
        f"(image tower {n_params(clip.visual) / 1e6:.2f}M; the text tower's token embedding "
        f"{clip.token_embedding.weight.numel() / 1e6:.2f}M of them), pre-trained "
        f"contrastively on {len(exp.train) + len(exp.heldout)} + other captioned digits "
        "(MNIST part, scikit-learn scans, matplotlib-font renderings, corrupted MNIST). "
        f"Fine-tuning domain: MNIST ({len(exp.train)} train, {len(exp.heldout)} held-out); "
        f"ID test: MNIST ({len(exp.test)}); shifts: "
        + ", ".join(f"{n} ({len(d)})" for n, d in exp.shifts.items()) + ". "
        f"Total time {seconds:.0f}s (pre-training/cache {t_pre:.0f}s).", "",
        "## Results", "",
        acc_table([("zero-shot (α=0)", z)] + [(f"WiSE-FT α={p['alpha']:g}", p["acc"])
                                             for p in mid]
                  + [("fine-tuned (α=1)", f)] + [(k, v) for k, v in soups["methods"].items()
                                                 if k != "zero-shot"], shifts), "",
        "![WiSE-FT](wiseft.png)", "", "![soups](soups.png)", "",
        "## Do the papers' effects reproduce here?", "",
        f"- WiSE-FT: best avg OOD at α = {best['alpha']:g}: "
        f"{100 * best['acc']['avg_ood']:.1f} vs zero-shot {100 * z['avg_ood']:.1f} and "
        f"fine-tuned {100 * f['avg_ood']:.1f} → "
        + ("**yes**, an intermediate α beats both endpoints out of distribution."
           if wise_ok and 0 < best["alpha"] < 1 else "**no**, not in this run."),
        _rule_a(wise, curve),
        f"- Greedy soup ({len(soups['greedy'].selected)} of {len(soups['runs'])} ingredients) "
        f"vs best single model (by held-out): ID {100 * g['id']:.1f} vs {100 * b['id']:.1f}, "
        f"avg OOD {100 * g['avg_ood']:.1f} vs {100 * b['avg_ood']:.1f} → "
        + ("**yes**" if soup_ok_id and soup_ok_ood else "**partly**" if soup_ok_id or soup_ok_ood
           else "**no**") + " (above on " + ", ".join(
               [x for x, ok in (("ID", soup_ok_id), ("OOD", soup_ok_ood)) if ok] or ["neither"])
        + ").", "",
        ("Single runs on small test sets: see the Clopper–Pearson intervals "
        "(`ladle.clip.evaluate.clopper_pearson`) before reading much into 1-point gaps."), "",
        (f"Details: [WiSE-FT report]({wise['report'].name}), "
        f"[soup report]({soups['report'].name}), `results.jsonl`."), ""])
