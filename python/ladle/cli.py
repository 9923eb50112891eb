"""The ``ladle`` command line: merge, soup (--greedy), sweep, convert, inspect, demo.

Bad input exits non-zero with a one-line ``ladle: error: ...`` message and no
traceback; ``LADLE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._units import format_size, parse_size
from .cli_soups import add_greedy_options, add_subcommands
from .errors import LadleError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output .safetensors file or directory")
    p.add_argument("--dtype", help="output dtype of float tensors: bf16, f16, f32, f64")
    p.add_argument("--max-shard-size", default="5GB", help="shard size of directory outputs")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    p.add_argument("--memory-budget", default="256MiB", help="bound on buffers, e.g. 256MiB")
    p.add_argument("--include", action="append", help="only tensors matching this glob")
    p.add_argument("--exclude", action="append", help="skip tensors matching this glob")
    p.add_argument("--check-finite", action="store_true", help="fail on NaN/Inf values")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("merge", help="weighted sum of checkpoints (or WiSE-FT with --alpha)")
    p.add_argument("checkpoints", nargs="+")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", type=float, nargs="+", help="one weight per checkpoint")
    group.add_argument("--alpha", type=float, help="WiSE-FT: (1-alpha)*THETA0 + alpha*THETA1")
    _add_common(p)

    p = sub.add_parser("soup", help="uniform (or normalised weighted) average of checkpoints")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--weights", type=float, nargs="+", help="weights, normalised to sum 1")
    _add_common(p)
    add_greedy_options(p)

    p = sub.add_parser("inspect", help="list tensors, dtypes, shapes, bytes and metadata")
    p.add_argument("checkpoint")

    p = sub.add_parser("demo", help="merge generated Llama-shaped checkpoints and verify")
    p.add_argument("--workdir", default="demo-work", help="where checkpoints are generated")
    p.add_argument("--size", default="1GB", help="approximate size of each checkpoint")
    add_subcommands(sub)  # sweep, convert

    p = sub.add_parser("clip", add_help=False,
                       help="CLIP harness: zeroshot|finetune|evaluate|wiseft|soup|demo")
    p.add_argument("clip_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "clip":  # `ladle clip --help` etc. belong to the clip parser
        args.clip_args = extra + args.clip_args
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _dispatch(args)
    except (LadleError, OSError, ValueError) as e:
        if os.environ.get("LADLE_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ladle: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ladle: interrupted; no output was written", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "clip":
        from .clip.cli import main as clip_main

        return clip_main(args.clip_args)
    if args.command == "inspect":
        return _inspect(args.checkpoint)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(Path(args.workdir), parse_size(args.size))
    if args.command in ("sweep", "convert") or getattr(args, "greedy", False):
        from .cli_soups import dispatch

        return dispatch(args)
    from .merge import interpolate, merge, soup

    options = {"dtype": args.dtype, "max_shard_size": args.max_shard_size, "threads": args.threads,
                   "memory_budget": args.memory_budget, "include": args.include,
                   "exclude": args.exclude, "check_finite": args.check_finite,
                   "overwrite": args.overwrite, "dry_run": args.dry_run, "progress": not args.quiet}
    if args.command == "soup":
        report = soup(args.checkpoints, args.out, weights=args.weights, **options)
    elif args.alpha is not None:
        if len(args.checkpoints) != 2:
            raise LadleError(f"--alpha takes exactly two checkpoints (THETA0 THETA1), "
                             f"got {len(args.checkpoints)}")
        report = interpolate(args.checkpoints[0], args.checkpoints[1], args.alpha, args.out,
                             **options)
    else:
        report = merge(args.checkpoints, args.weights, args.out, **options)
    if not args.quiet and not args.dry_run:
        print(f"wrote {report.out}: {report.n_tensors} tensors in {report.n_shards} shard(s), "
              f"read {format_size(report.bytes_read)}, wrote {format_size(report.bytes_written)} "
              f"in {report.seconds:.2f} s ({report.gb_per_s:.2f} GB/s, {report.threads} "
              f"threads, {report.kernel} kernels)")
    return 0


def _inspect(path: str) -> int:
    from .checkpoint import open_checkpoint

    ckpt = open_checkpoint(path)
    print(f"{ckpt.path}: {len(ckpt.tensors)} tensors in {len(ckpt.file_sizes)} file(s), "
          f"{ckpt.n_bytes} bytes of tensor data ({format_size(ckpt.n_bytes)})")
    for key, value in sorted(ckpt.metadata.items()):
        print(f"  metadata {key} = {value}")
    width = max((len(n) for n in ckpt.tensors), default=0)
    for t in ckpt.tensors.values():
        print(f"  {t.name:<{width}}  {t.dtype:<5} {list(t.shape)!s:<20} {t.n_bytes:>12}  "
              f"{t.file.name}")
    return 0
