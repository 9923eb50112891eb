"""The built-in offline demo: pre-train a tiny CLIP contrastively on broad captioned
digits (a little MNIST, scikit-learn scans, matplotlib-font renderings), then run
WiSE-FT and the soup pipeline with MNIST as the fine-tuning (ID) domain and scans,
fresh font renderings and corrupted MNIST as distribution shifts, over several seeds,
and write one Markdown report with the plots. The design is pre-registered
(docs/clip-demo.md: no test image in pre-training, ID gain ≥ 8 pp, shifts where
fine-tuning transfers and where it hurts, 3 seeds with intervals); the report states
whether the preconditions held and whether the papers' effects (OOD accuracy at an
intermediate α above both endpoints; greedy soup above the best single model)
reproduce.

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
    n_mnist = int(data.get("pretrain_mnist", 2000))
    corrupted = bool(data.get("pretrain_corrupted", True))
    splits = demo_splits(int(data.get("seed", 0)),
                         fonts_per_class=int(data.get("fonts_per_class", 150)),
                         pretrain_mnist=n_mnist, pretrain_corrupted=corrupted,
                         cache=cache_dir / f"digits-{data.get('seed', 0)}-"
                                           f"{data.get('fonts_per_class', 150)}-m{n_mnist}"
                                           f"{'-c' if corrupted else ''}.pt")
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
    cache = Path(cfg.get("cache_dir", out / "cache"))
    seeds = [int(s) for s in cfg.get("seeds", [cfg.get("data", {}).get("seed", 0)])]
    clip, tok, splits = pretrained_tiny_clip(seeded(cfg, seeds[0]), cache, progress)
    t_pre = time.perf_counter() - t0
    exp = Experiment.from_config(seeded(cfg, seeds[0]), out, clip=clip, tokenizer=tok,
                                 builtin=splits)
    shifts = list(exp.shifts)
    zs = exp.evaluate(exp.zeroshot)
    print(f"zero-shot tiny CLIP ({n_params(clip) / 1e6:.2f}M params): "
          f"{accuracy_summary(zs, shifts)}")
    soups = run_soups(seeded(cfg, seeds[0]), out, experiment=exp, progress=progress,
                      quiet=True)
    # WiSE-FT on the sweep's first run (the standard recipe of the preset).
    wise = run_wiseft(seeded(cfg, seeds[0]), out, experiment=exp,
                      finetuned=soups["runs"][0]["final"], epochs=soups["runs"][0]["epochs"],
                      fit=soups["fit"], progress=False, quiet=True)
    t_an = time.perf_counter()
    # The analyses compare the sweep's endpoints, so they need α = 0 and 1 on the grid.
    analyses = (run_analyses(exp, wise, soups) if {0.0, 1.0} <= set(wise["logits"])
                else None)
    t_an = time.perf_counter() - t_an
    # Further seeds: pre-training, one fine-tuning run and the α sweep each.
    per_seed = [seed_record(seeds[0], exp, wise)]
    for seed in seeds[1:]:
        scfg = seeded(cfg, seed)
        s_clip, s_tok, s_splits = pretrained_tiny_clip(scfg, cache, progress)
        s_exp = Experiment.from_config(scfg, out / f"seed{seed}", clip=s_clip, tokenizer=s_tok,
                                       builtin=s_splits)
        s_wise = run_wiseft(scfg, out / f"seed{seed}", experiment=s_exp, progress=False,
                            quiet=True)
        per_seed.append(seed_record(seed, s_exp, s_wise))
    seconds = time.perf_counter() - t0
    report = out / "report.md"
    report.write_text(_demo_report(cfg, exp, clip, zs, wise, soups, seconds, t_pre)
                      + seeds_markdown(per_seed, shifts) + analyses_markdown(analyses,
                                                                             seconds=t_an))
    print(_summary(wise, soups))
    for r in per_seed:
        print(f"seed {r['seed']}: {r['verdict_line']}")
    print(f"report: {report} ({seconds:.0f}s)")
    return 0


def seeded(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config with every seed (data, pre-training, fine-tuning, held-out split,
    the sweep's runs offset by it) set from ``seed``."""
    import copy

    c = copy.deepcopy(cfg)
    for key in ("data", "pretrain", "finetune", "heldout"):
        c.setdefault(key, {})["seed"] = seed
    if c.get("sweep", {}).get("kind") == "list":
        for i, run in enumerate(c["sweep"]["runs"]):
            run["seed"] = seed * 100 + int(run.get("seed", i))
    return c


def seed_record(seed: int, exp: Any, wise: dict[str, Any]) -> dict[str, Any]:
    """One seed's figures for the across-seeds section: endpoints, per-shift change,
    the best intermediate α and the verdicts."""
    from .evaluate import clopper_pearson

    curve = wise["curve"]
    z, f = curve[0]["acc"], curve[-1]["acc"]
    mid = [p for p in curve if 0 < p["alpha"] < 1]
    best_mid = max(mid, key=lambda p: p["acc"]["avg_ood"]) if mid else curve[-1]
    best = max(curve, key=lambda p: p["acc"]["avg_ood"])
    half = next((p["acc"] for p in curve if p["alpha"] == 0.5), None)
    wise_yes = 0 < best["alpha"] < 1 and best["acc"]["avg_ood"] > max(z["avg_ood"],
                                                                      f["avg_ood"])
    ho = wise["selection"].get("best-heldout")
    by = {p["alpha"]: p["acc"] for p in curve}
    sizes = {"id": len(exp.test), **{n: len(d) for n, d in exp.shifts.items()}}
    ci = {f"{n}@{a}": clopper_pearson(round(acc[n] * sizes[n]), sizes[n])
          for a, acc in (("zs", z), ("ft", f)) for n in sizes}
    rec = {"seed": seed, "zs": z, "ft": f, "id_gain": f["id"] - z["id"],
           "shift_delta": {n: f[n] - z[n] for n in exp.shifts},
           "best_mid_alpha": best_mid["alpha"], "best_mid_ood": best_mid["acc"]["avg_ood"],
           "best_alpha": best["alpha"],
           "mid_gain": best_mid["acc"]["avg_ood"] - max(z["avg_ood"], f["avg_ood"]),
           "half": half, "heldout_alpha": ho,
           "heldout_ood": by[ho]["avg_ood"] if ho is not None else None,
           "wiseft_yes": wise_yes, "p1": f["id"] - z["id"] >= 0.08, "ci": ci}
    rec["verdict_line"] = (
        f"ID {100 * z['id']:.1f} → {100 * f['id']:.1f} ({100 * rec['id_gain']:+.1f} pp, P1 "
        f"{'met' if rec['p1'] else 'not met'}); avg OOD zero-shot {100 * z['avg_ood']:.1f}, "
        f"fine-tuned {100 * f['avg_ood']:.1f}, best α={best['alpha']:g} "
        f"{100 * best['acc']['avg_ood']:.1f} → WiSE-FT "
        + ("yes" if wise_yes else "no"))
    return rec


def _t_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval (n − 1 degrees of freedom)."""
    import statistics

    from scipy.stats import t

    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    half = t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
    return m, m - half, m + half


def seeds_markdown(per_seed: list[dict[str, Any]], shifts: list[str]) -> str:
    """The across-seeds section: the pre-registered preconditions and verdicts per
    seed, per-seed Clopper–Pearson intervals, and t-intervals over the seeds."""
    def pp(x: float) -> str:
        return f"{100 * x:+.1f}"

    def ivl(xs: list[float]) -> str:
        m, lo, hi = _t_interval(xs)
        return f"{100 * m:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    lines = ["", "## Across seeds (pre-registered design: docs/clip-demo.md)", "",
             "Design fixed before the first run: pre-training on broad captioned digits "
             "(500 MNIST, scans 0–899, font renderings; no corrupted digits, no test "
             "image of any set); fine-tuning on MNIST; shifts: "
             + ", ".join(shifts) + ". Preconditions: P1 ID gain ≥ 8 pp per seed; P2 "
             "shifts where fine-tuning transfers and where it hurts (mean over seeds).", "",
             "| seed | ID zero-shot → fine-tuned | ID gain (P1) | "
             + " | ".join(f"Δ {n}" for n in shifts)
             + " | best α (avg OOD) | best mid-α − better endpoint | α by held-out "
               "(avg OOD) | WiSE-FT |",
             "|---" * (7 + len(shifts)) + "|"]
    for r in per_seed:
        z, f = r["zs"], r["ft"]
        ci_z, ci_f = r["ci"]["id@zs"], r["ci"]["id@ft"]
        ho = (f"{r['heldout_alpha']:g} ({100 * r['heldout_ood']:.1f})"
              if r["heldout_alpha"] is not None else "–")
        lines.append(
            f"| {r['seed']} | {100 * z['id']:.1f} [{100 * ci_z[0]:.1f}, {100 * ci_z[1]:.1f}] → "
            f"{100 * f['id']:.1f} [{100 * ci_f[0]:.1f}, {100 * ci_f[1]:.1f}] | "
            f"{pp(r['id_gain'])} ({'met' if r['p1'] else 'not met'}) | "
            + " | ".join(pp(r["shift_delta"][n]) for n in shifts)
            + f" | {r['best_alpha']:g} ({100 * max(z['avg_ood'], f['avg_ood'], r['best_mid_ood']):.1f})"
            f" | {pp(r['mid_gain'])} | {ho} | **{'yes' if r['wiseft_yes'] else 'no'}** |")
    mean_delta = {n: sum(r["shift_delta"][n] for r in per_seed) / len(per_seed)
                  for n in shifts}
    transfers = [n for n in shifts if mean_delta[n] > 0]
    hurts = [n for n in shifts if mean_delta[n] < 0]
    p2 = bool(transfers and hurts)
    yes = sum(r["wiseft_yes"] for r in per_seed)
    lines += ["", (f"- P1 (ID gain ≥ 8 pp): met in {sum(r['p1'] for r in per_seed)} of "
              f"{len(per_seed)} seeds; ID gain {ivl([r['id_gain'] for r in per_seed])} "
              "(mean, 95% t-interval)."),
              f"- P2 (shifts span both cases): **{'met' if p2 else 'not met'}** — fine-tuning "
              f"transfers on {', '.join(transfers) or 'none'}, hurts on "
              f"{', '.join(hurts) or 'none'} (mean Δ: "
              + ", ".join(f"{n} {ivl([r['shift_delta'][n] for r in per_seed])}"
                          for n in shifts) + ").",
              (f"- WiSE-FT (an intermediate α above both endpoints out of distribution): "
              f"**yes in {yes} of {len(per_seed)} seeds**; best intermediate α minus the "
              f"better endpoint, avg OOD: {ivl([r['mid_gain'] for r in per_seed])}.")]
    halves = [r for r in per_seed if r["half"] is not None]
    if halves:
        lines.append(
            "- α = 0.5 minus the fine-tuned model: ID "
            f"{ivl([r['half']['id'] - r['ft']['id'] for r in halves])}, avg OOD "
            f"{ivl([r['half']['avg_ood'] - r['ft']['avg_ood'] for r in halves])}.")
    if not (all(r["p1"] for r in per_seed) and p2):
        lines.append("- A precondition is not met, so these verdicts do not test the "
                     "papers' claim under the papers' conditions.")
    return "\n".join(lines) + "\n\n"


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
        f"contrastively on {cfg.get('data', {}).get('pretrain_mnist', 2000)} captioned MNIST "
        "digits, scikit-learn scans 0–899 and matplotlib-font renderings"
        + ("" if not cfg.get("data", {}).get("pretrain_corrupted", True)
           else " and corrupted MNIST") + " (no test image of any set). "
        f"Fine-tuning domain: MNIST ({len(exp.train)} train, {len(exp.heldout)} held-out); "
        f"ID test: MNIST ({len(exp.test)}); shifts: "
        + ", ".join(f"{n} ({len(d)})" for n, d in exp.shifts.items()) + ". "
        f"Total time {seconds:.0f}s (pre-training/cache {t_pre:.0f}s).", "",
        "## Results (seed 0)", "",
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
