"""``ladle analyze``: the analyses that need no model code.

    ladle analyze angle THETA0 THETA1 THETA2 [--include-gains] [--exclude GLOB ...]
    ladle analyze calibration preds.npz [--bins 15]
    ladle analyze diversity a.npz b.npz
    ladle analyze plane THETA0 THETA1 THETA2 --model M:F --evaluate M:F [--n 11] [--out P]
    ladle analyze advantage CKPT CKPT [CKPT ...] --model M:F --evaluate M:F

``.npz`` files hold ``logits`` (N × C) and ``labels`` (N,) arrays (``probs`` is
accepted instead of ``logits`` by ``calibration``). ``plane`` and ``advantage``
evaluate models: ``--model`` builds the live module the checkpoints are streamed into,
``--evaluate`` scores it (``module:function`` or ``file.py:function``, as for
``ladle soup --greedy``).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..cli.cli_types import COUNT, FINITE, THREADS
from ..errors import LadleValueError

if TYPE_CHECKING:  # numpy loads with an analysis, not with every `ladle` command's parser
    import numpy as np


def add_subcommands(sub: Any) -> None:
    """Register ``ladle analyze``."""
    p = sub.add_parser("analyze", help="weight-space angle, loss plane, interpolation "
                                       "advantage, calibration, diversity")
    a = p.add_subparsers(dest="analysis", required=True)
    q = a.add_parser("angle", help="angle between THETA1-THETA0 and THETA2-THETA0 (streamed)")
    q.add_argument("theta0")
    q.add_argument("theta1")
    q.add_argument("theta2")
    gains = q.add_mutually_exclusive_group()
    gains.add_argument("--exclude-gains", dest="exclude_gains", action="store_true",
                       default=True, help="leave out biases/norms (default)")
    gains.add_argument("--include-gains", dest="exclude_gains", action="store_false",
                       help="use every float tensor")
    q.add_argument("--exclude", action="append", help="further tensor-name globs to drop")
    q.add_argument("--threads", type=THREADS, default=0)
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q = a.add_parser("calibration", help="accuracy, NLL, ECE (equal-mass bins), temperature")
    q.add_argument("preds", help=".npz with logits (or probs) and labels")
    q.add_argument("--bins", type=COUNT, default=15)
    q.add_argument("--json", action="store_true")
    q = a.add_parser("diversity", help="PD, CC, KL, CKAC, McNemar between two models")
    q.add_argument("a", help=".npz with logits and labels")
    q.add_argument("b", help=".npz with logits (labels as in A)")
    q.add_argument("--json", action="store_true")
    q = a.add_parser("plane", help="evaluate the plane through THETA0, THETA1, THETA2 on a "
                                   "grid and draw its contour plot")
    for name in ("theta0", "theta1", "theta2"):
        q.add_argument(name)
    _add_model_options(q)
    q.add_argument("--n", type=COUNT, default=11, help="grid points per axis")
    q.add_argument("--margin", type=FINITE, default=0.2, help="grid margin around the points")
    q.add_argument("--out", default="plane.png", help="contour plot (png, pdf, svg)")
    q = a.add_parser("advantage", help="interpolation advantage of every pair of checkpoints")
    q.add_argument("checkpoints", nargs="+")
    _add_model_options(q)


def _add_model_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--model", required=True, help="MODULE:FUNCTION returning the live module")
    q.add_argument("--evaluate", required=True,
                   help="MODULE:FUNCTION scoring a module (higher is better)")
    q.add_argument("--threads", type=THREADS, default=0)
    q.add_argument("--json", action="store_true")


def _load(path: str, *keys: str) -> dict[str, np.ndarray]:
    import numpy as np

    with np.load(path) as z:
        got = {k: z[k] for k in keys if k in z}
        if not got or "labels" in keys and "labels" not in got:
            raise LadleValueError(f"{path}: needs arrays {' and '.join(keys)}, has "
                                  f"{sorted(z.files)}")
        return got


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=1))
        return
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def dispatch(args: argparse.Namespace) -> int:
    """Run one ``ladle analyze`` subcommand."""
    if args.analysis == "angle":
        from .geometry import angle

        r = angle(args.theta0, args.theta1, args.theta2, exclude_gains=args.exclude_gains,
                  exclude=args.exclude, threads=args.threads)
        r["tensors"] = len(r["tensors"])
        _print(r, args.json)
    elif args.analysis == "calibration":
        from .calibration import calibration_report, expected_calibration_error

        z = _load(args.preds, "logits", "probs", "labels")
        if "logits" in z:
            _print(calibration_report(z["logits"], z["labels"], n_bins=args.bins), args.json)
        elif "probs" in z:
            _print({"ece": expected_calibration_error(z["probs"], z["labels"],
                                                      n_bins=args.bins)}, args.json)
        else:
            raise LadleValueError(f"{args.preds}: needs a logits or probs array")
    elif args.analysis in ("plane", "advantage"):
        return _evaluate_models(args)
    else:
        from .diversity import diversity_report
        from .significance import mcnemar_exact

        za, zb = _load(args.a, "logits", "labels"), _load(args.b, "logits")
        if "logits" not in za or "logits" not in zb:
            raise LadleValueError("both files need a logits array")
        r = diversity_report(za["logits"], zb["logits"], za["labels"])
        r["mcnemar_p"] = mcnemar_exact(za["logits"], zb["logits"], za["labels"])["p_value"]
        _print(r, args.json)
    return 0


def _evaluate_models(args: argparse.Namespace) -> int:
    import numpy as np

    from ..cli.cli_soups import load_hook

    model = load_hook(args.model, "--model")()
    evaluate = load_hook(args.evaluate, "--evaluate")
    if args.analysis == "plane":
        from .plane import evaluate_plane, plot_plane

        grid = evaluate_plane(model, args.theta0, args.theta1, args.theta2, evaluate, n=args.n,
                              margin=args.margin, threads=args.threads)
        path = plot_plane(grid, args.out)
        metric = next(iter(grid.values))
        values = grid.values[metric]
        best = np.unravel_index(np.nanargmax(values), values.shape)
        _print({"points": int(values.size), "metric": metric, "best": float(values[best]),
                "best_a": float(grid.a[best[1]]), "best_b": float(grid.b[best[0]]),
                "plot": str(path)}, args.json)
        return 0
    from .geometry import pairwise_interpolation_advantage

    if len(args.checkpoints) < 2:
        raise LadleValueError("advantage needs at least two checkpoints")
    r = pairwise_interpolation_advantage(model, args.checkpoints, evaluate,
                                         threads=args.threads)
    k = len(args.checkpoints)
    if args.json:
        print(json.dumps({"checkpoints": args.checkpoints, "scores": r["accs"].tolist(),
                          "midpoints": r["acc_mid"].tolist(),
                          "advantage": r["advantage"].tolist()}, indent=1))
        return 0
    for i in range(k):
        print(f"[{i}] {args.checkpoints[i]}  score {r['accs'][i]:.6g}")
    for i in range(k):
        for j in range(i + 1, k):
            print(f"[{i}]-[{j}]  midpoint {r['acc_mid'][i, j]:.6g}  advantage "
                  f"{r['advantage'][i, j]:+.6g}")
    return 0
