"""CLI subcommands for live models: ``ladle soup --greedy``, ``ladle sweep`` and
``ladle convert``. Soups and sweeps take Python hooks given as ``module:function``
(or ``path/to/file.py:function``): ``--model`` builds the ``nn.Module`` and
``--evaluate`` scores it (``evaluate(module) -> float``, higher is better).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LadleValueError
from .cli_types import FINITE


def add_greedy_options(p: argparse.ArgumentParser) -> None:
    """Options of ``ladle soup`` that switch it to a greedy soup."""
    p.add_argument("--greedy", action="store_true",
                   help="greedy soup (Model soups Recipe 1) scored with --evaluate")
    p.add_argument("--model", help="MODULE:FUNCTION returning the nn.Module to load into")
    p.add_argument("--evaluate", help="MODULE:FUNCTION, evaluate(module) -> float")
    p.add_argument("--order", default="score", choices=["score", "given", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-replacement", action="store_true")
    p.add_argument("--not-worse", action="store_true",
                   help="accept ties (default: only strict improvements)")
    p.add_argument("--log", help="append every evaluation to this JSONL file")


def add_subcommands(sub: Any) -> None:
    """Register ``sweep`` and ``convert``."""
    p = sub.add_parser("sweep", help="WiSE-FT sweep of a live model over alphas")
    p.add_argument("theta0")
    p.add_argument("theta1")
    p.add_argument("--model", required=True, help="MODULE:FUNCTION returning the nn.Module")
    p.add_argument("--evaluate", required=True, help="MODULE:FUNCTION, evaluate(module)")
    p.add_argument("--alphas", type=FINITE, nargs="+", help="default 0, 0.05, ..., 1")
    p.add_argument("--log", help="append every evaluation to this JSONL file")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("convert", help="write a .pt/.bin checkpoint as sharded safetensors")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")


def load_hook(spec: str | None, what: str) -> Callable[..., Any]:
    """Import ``module:function`` or ``file.py:function``."""
    if not spec or ":" not in spec:
        raise LadleValueError(f"{what} must be given as MODULE:FUNCTION, got {spec!r}")
    mod_name, func = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        if loader_spec is None or loader_spec.loader is None:
            raise LadleValueError(f"{what}: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")
        module = importlib.import_module(mod_name)
    if not hasattr(module, func):
        raise LadleValueError(f"{what}: {mod_name} has no function {func!r}")
    return getattr(module, func)


def dispatch(args: argparse.Namespace) -> int:
    """Run ``soup --greedy``, ``sweep`` or ``convert``."""
    if args.command == "convert":
        from ..engine.writer import save

        out = save(args.checkpoint, args.out, max_shard_size=args.max_shard_size,
                   overwrite=args.overwrite)
        if not args.quiet:
            print(f"wrote {out}")
        return 0
    if getattr(args, "kernel", "auto") != "auto":
        raise LadleValueError("--kernel applies to merges and soups, not to --greedy")
    model = load_hook(args.model, "--model")()
    evaluate = load_hook(args.evaluate, "--evaluate")
    if args.command == "sweep":
        return _sweep(args, model, evaluate)
    from ..soups.soups import greedy_soup

    result = greedy_soup(model, args.checkpoints, evaluate, out=args.out,
                         strict=not args.not_worse, order=args.order, seed=args.seed,
                         with_replacement=args.with_replacement, log=args.log,
                         progress=not args.quiet, threads=args.threads,
                         memory_budget=args.memory_budget, overwrite=args.overwrite,
                         max_shard_size=args.max_shard_size, int_policy=args.int_policy)
    if not args.quiet:
        rows = [(str(h["step"]), h["label"], f"{h['score']:.6g}",
                 "yes" if h["accepted"] else "no", str(h["n_ingredients"]))
                for h in result.history]
        print(_table(("step", "candidate", "held-out", "accepted", "soup size"), rows))
        print(f"greedy soup of {len(result.selected)} of {len(result.ingredients)} "
              f"ingredients, held-out {result.score:.6g}; wrote {result.out}")
    return 0


def _sweep(args: argparse.Namespace, model: Any, evaluate: Callable[[Any], Any]) -> int:
    from ..soups.wiseft import wiseft_sweep

    points = wiseft_sweep(model, args.theta0, args.theta1, args.alphas, evaluate, log=args.log,
                          progress=not args.quiet)
    if not args.quiet:
        print(_table(("alpha", "score", "seconds"),
                     [(f"{p.alpha:g}", str(p.score), f"{p.seconds:.3f}") for p in points]))
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])
