"""The CLIP harness from the shell: zero-shot, fine-tuning, evaluation, WiSE-FT, soups.

Subcommands: ``ladle clip zeroshot|finetune|evaluate|wiseft|soup|backbone-soup|demo``.

Every command takes ``--config`` (a preset name — ``wiseft-e2e``, ``wiseft-lc``,
``soups-vit-b32``, ``demo`` — or a JSON file, which may ``"extends"`` a preset) and
``--out`` (results directory); ``--set key.sub=value`` overrides config entries
(values parsed as JSON when possible).

Example:
    $ ladle clip wiseft --config demo --out runs/wiseft
    $ ladle clip soup --config soups-vit-b32 --set model.pretrained=vitb32.safetensors \\
          --set data.train=imagenet/train --out runs/soups
    $ ladle clip finetune --config demo --set finetune.distill_weight=0.5 --out runs/kd
    $ ladle clip backbone-soup --config my-cifar100.json runs/zs/zeroshot.safetensors \\
          runs/cifar10/finetune/epoch_10.safetensors runs/dtd/finetune/epoch_10.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladle clip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"zeroshot": "build and evaluate the zero-shot classifier (saves θ0)",
             "finetune": "fine-tune from the zero-shot head (per-epoch checkpoints)",
             "evaluate": "evaluate checkpoints on the ID test set and the shifts",
             "wiseft": "zero-shot → fine-tune → α sweep → JSONL, PNG, Markdown",
             "soup": "sweep → N fine-tuned models → soups vs ensembles → JSONL, PNG, Markdown",
             "backbone-soup": "average the image encoders of models fine-tuned on other "
                              "datasets, attach this config's zero-shot head, evaluate",
             "demo": "the built-in offline demo (tiny CLIP on digits): WiSE-FT and soups"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default="demo", help="preset name or JSON file")
        p.add_argument("--out", default=f"clip-{name}", help="results directory")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config entry, e.g. finetune.lr=1e-5")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "evaluate":
            p.add_argument("checkpoints", nargs="+", help="classifier checkpoints")
        if name == "backbone-soup":
            p.add_argument("checkpoints", nargs="+",
                           help="ingredient classifiers (any heads; only encoders are read)")
        if name == "wiseft":
            p.add_argument("--finetuned", help="use this θ1 instead of fine-tuning")
            p.add_argument("--zeroshot", help="use this θ0 (any float dtype, e.g. an fp16 "
                                              "release) instead of the config's zero-shot "
                                              "classifier")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ladle clip``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .config import load_preset, override_config

    if args.command == "demo":
        from .demo import run_clip_demo

        return run_clip_demo(Path(args.out), config=args.config, overrides=args.set,
                             progress=not args.quiet)
    cfg = override_config(load_preset(args.config), args.set)
    out = Path(args.out)
    progress = not args.quiet
    from .experiment import accuracy_summary

    exp = _experiment(cfg, out, progress)
    shifts = list(exp.shifts)
    if args.command == "zeroshot":
        acc = exp.evaluate(exp.zeroshot)
        exp.log.append("zeroshot", acc=acc)
        print(f"zero-shot: {accuracy_summary(acc, shifts)}\nθ0 saved to {exp.theta0}")
    elif args.command == "finetune":
        import copy

        from .config import FinetuneConfig
        from .finetune import finetune

        fcfg = FinetuneConfig.from_dict({**cfg.get("finetune", {}), "name": "finetune"})
        res = finetune(copy.deepcopy(exp.zeroshot), exp.train, fcfg, eval_sets=exp.eval_sets,
                       id_name="id", out_dir=out / "finetune", log=exp.log, progress=progress)
        for h in res.history:
            if "acc" in h:
                print(f"epoch {h['epoch']}: {accuracy_summary(h['acc'], shifts)}")
        print(f"final checkpoint: {res.final}")
    elif args.command == "evaluate":
        import ladle

        model = exp.fresh_model(exp.eval_device)
        for ckpt in args.checkpoints:
            ladle.load_into(model, [ckpt])
            acc = exp.evaluate(model)
            exp.log.append("evaluate", checkpoint=ckpt, acc=acc)
            print(f"{ckpt}: {accuracy_summary(acc, shifts)}")
    elif args.command == "wiseft":
        from .wiseft import run_wiseft

        if args.zeroshot:  # θ0 as given, in its own dtype; fine-tuning starts from it too
            import ladle

            ladle.load_into(exp.zeroshot, [args.zeroshot])
            exp.theta0 = Path(args.zeroshot)
        run_wiseft(cfg, out, experiment=exp, finetuned=args.finetuned, progress=progress)
    elif args.command == "soup":
        from .soups import run_soups

        run_soups(cfg, out, experiment=exp, progress=progress)
    elif args.command == "backbone-soup":
        from .backbone_soup import backbone_soup

        model = exp.fresh_model()  # θ0 with this config's zero-shot head
        res = backbone_soup(model, args.checkpoints, out=out / "backbone_soup.safetensors",
                            log=exp.log, overwrite=True)
        acc = exp.evaluate(model)
        exp.log.append("backbone-soup/eval", ingredients=res.ingredients, acc=acc)
        print(f"backbone soup of {len(args.checkpoints)}: {accuracy_summary(acc, shifts)}\n"
              f"saved to {res.out}")
    return 0


def _experiment(cfg: dict[str, Any], out: Path, progress: bool = True) -> Any:
    from .demo import pretrained_tiny_clip
    from .experiment import Experiment

    if cfg.get("model", {}).get("pretrain_demo"):
        clip, tok, splits = pretrained_tiny_clip(cfg, Path(cfg.get("cache_dir", out / "cache")),
                                                 progress)
        return Experiment.from_config(cfg, out, clip=clip, tokenizer=tok, builtin=splits)
    return Experiment.from_config(cfg, out)
