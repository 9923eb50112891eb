"""The ``ladle`` command line: merge, soup (--greedy), sweep, convert, inspect, demo, analyze.

Bad input exits non-zero with a one-line ``ladle: error: ...`` message and no
traceback; ``LADLE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..engine._units import format_size, parse_size
from ..errors import LadleError, LadleWarning, printable
from .cli_soups import add_greedy_options, add_subcommands
from .cli_types import THREADS


class _Parser(argparse.ArgumentParser):
    """argparse with ladle's one-line error (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"ladle: error: {message.splitlines()[0] if message else 'bad arguments'}\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output .safetensors file or directory")
    p.add_argument("--dtype", help="output dtype of float tensors: bf16, f16, f32, f64, "
                   "f8_e4m3, f8_e5m2 (default: the widest input dtype of each tensor); fp8: "
                   "block-scaled FP8 weights as F8_E4M3 with fresh block scales")
    p.add_argument("--max-shard-size", default="5GB", help="shard size of directory outputs")
    p.add_argument("--threads", type=THREADS, default=0, help="worker threads (0: all cores)")
    p.add_argument("--memory-budget", default="256MiB", help="bound on buffers, e.g. 256MiB")
    p.add_argument("--include", action="append", help="only tensors matching this glob")
    p.add_argument("--exclude", action="append", help="skip tensors matching this glob")
    p.add_argument("--check-finite", action="store_true", help="fail on NaN/Inf values")
    p.add_argument("--int-policy", default="first",  # checked by the API: one-line error
                   help="first, max or error: integer/bool tensors (e.g. num_batches_tracked) that differ across "
                        "inputs with a non-zero weight: copy the first input's (default), "
                        "take the elementwise max, or refuse")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted merge, keeping its verified finished shards")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N: stream the merge through the GPU")
    p.add_argument("--distributed", action="store_true", default=None,
                   help="split the output shards across torch.distributed ranks (torchrun); "
                        "on by default when WORLD_SIZE > 1")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load whole-module .pt/.bin pickles (runs their code; refused by default)")
    p.add_argument("--kernel", default="auto",  # checked by the API: one-line error
                   help="CPU kernels: auto (default: the widest this CPU runs), scalar, avx2 "
                        "or avx512; every choice writes the same bytes")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ladle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("merge", help="weighted sum of checkpoints (or WiSE-FT with --alpha), "
                       "or a mergekit-style recipe with --config")
    p.add_argument("checkpoints", nargs="*")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", type=float, nargs="+", help="one weight per checkpoint")
    group.add_argument("--alpha", type=float, help="WiSE-FT: (1-alpha)*THETA0 + alpha*THETA1")
    group.add_argument("--config", help="mergekit-style YAML recipe (ties, dare_ties, slerp, ...)")
    _add_common(p)

    p = sub.add_parser("soup", help="uniform (or normalised weighted) average of checkpoints")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--weights", type=float, nargs="+", help="weights, normalised to sum 1")
    _add_common(p)
    add_greedy_options(p)

    p = sub.add_parser("check", help="pre-flight a merge from headers only: missing/extra/"
                       "mismatched tensors, dtype plan, FP8 scales, output size, free disk")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("-o", "--out", help="destination to check the free disk space of")
    p.add_argument("--dtype", help="output dtype of float tensors (default: widest input)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load whole-module .pt/.bin pickles (runs their code)")
    p = sub.add_parser("extract-lora", help="PEFT LoRA adapter from FINETUNED - BASE by "
                                            "truncated SVD, one weight at a time")
    p.add_argument("base")
    p.add_argument("finetuned")
    p.add_argument("--rank", type=int, required=True, help="LoRA rank r")
    p.add_argument("-o", "--out", required=True, help="adapter directory")
    p.add_argument("--dtype", help="dtype of the factors: bf16, f16, f32 (default: the "
                                   "fine-tuned weights')")
    p.add_argument("--device", help="torch device for the SVD (default: cuda if available)")
    p.add_argument("--lowrank", action="store_true",
                   help="randomized torch.svd_lowrank instead of the exact SVD")
    p.add_argument("--include", action="append", help="only tensors matching this glob")
    p.add_argument("--exclude", action="append", help="skip tensors matching this glob")
    p.add_argument("--modules-to-save", "--save-module", action="append", metavar="MODULE",
                   help="save this module at full rank (PEFT modules_to_save): a full name "
                        "or its last component, e.g. lm_head")
    p.add_argument("--embed-lora", action="store_true",
                   help="factor the input embeddings (lora_embedding_A/B) and output heads "
                        "too, instead of leaving them out")
    p.add_argument("--sv-epsilon", type=float, default=0.0,
                   help="drop singular values <= this (a module's rank may shrink)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")

    p = sub.add_parser("inspect", help="list tensors, dtypes, shapes, bytes and metadata")
    p.add_argument("checkpoint")

    p = sub.add_parser("verify", help="re-read an output: structure, checksums, recomputed "
                                      "values (exit 1 on any mismatch)")
    p.add_argument("out")
    p.add_argument("--inputs", nargs="+", help="input checkpoints (default: from metadata)")
    p.add_argument("--weights", type=float, nargs="+", help="weights (default: from metadata)")
    p.add_argument("--sample", type=int, default=8,
                   help="tensors to recompute (default 8; -1: all, 0: none)")
    p.add_argument("--check-finite", action="store_true", help="fail on NaN/Inf in the output")

    p = sub.add_parser("demo", help="merge generated Llama-shaped checkpoints and verify")
    p.add_argument("--workdir", default="demo-work", help="where checkpoints are generated")
    p.add_argument("--size", default="1GB", help="approximate size of each checkpoint")
    add_subcommands(sub)  # sweep, convert
    from ..analysis.cli import add_subcommands as add_analyze

    add_analyze(sub)  # analyze angle|calibration|diversity

    p = sub.add_parser("clip", add_help=False,
                       help="CLIP harness: zeroshot|finetune|evaluate|wiseft|soup|demo")
    p.add_argument("clip_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    # ladle's own numpy use is a few small arrays; OpenBLAS's idle threads would each
    # spin ~10^8 cycles after numpy loads, on the cores the merge runs on.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "clip":  # `ladle clip --help` etc. belong to the clip parser
        args.clip_args = extra + args.clip_args
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings():
            _show_notices(quiet=getattr(args, "quiet", False))
            return _dispatch(args)
    except (LadleError, OSError, ValueError) as e:
        if os.environ.get("LADLE_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ladle: error: {printable(message, keep_newlines=False)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        message = "ladle: interrupted; no output was written"
        out = getattr(args, "out", None)
        if out and args.command in ("merge", "soup"):
            partial = Path(out).with_name(Path(out).name + ".ladle-partial")
            if partial.is_dir():
                message += f"; finished shards kept in {partial} (rerun with --resume)"
        print(message, file=sys.stderr)
        return 130


def _show_notices(quiet: bool) -> None:
    """ladle's warnings (files skipped, ...) as ``ladle: warning: ...`` lines on
    stderr, each one shown; none with --quiet. Call inside catch_warnings()."""
    if quiet:
        warnings.simplefilter("ignore", LadleWarning)
        return
    warnings.simplefilter("always", LadleWarning)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, LadleWarning):
            return shown(message, category, filename, lineno, file, line)
        print(f"ladle: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "clip":
        from ..clip.cli import main as clip_main

        return clip_main(args.clip_args)
    if args.command == "inspect":
        return _inspect(args.checkpoint)
    if args.command == "check":
        from ..engine.preflight import preflight
        from ..formats.checkpoint import open_checkpoint

        report = preflight([open_checkpoint(c, args.trust_pickle) for c in args.checkpoints],
                           args.dtype, args.out)
        print(report.text())
        return 0 if report.ok else 1
    if args.command == "extract-lora":
        from ..methods.lora import extract_lora

        r = extract_lora(args.base, args.finetuned, args.out, args.rank, device=args.device,
                         dtype=args.dtype, method="lowrank" if args.lowrank else "svd",
                         include=args.include, exclude=args.exclude,
                         modules_to_save=args.modules_to_save, embed_lora=args.embed_lora,
                         sv_epsilon=args.sv_epsilon,
                         overwrite=args.overwrite, progress=not args.quiet)
        if not args.quiet:
            print(f"wrote {r.out}: {r.n_modules} LoRA modules of rank <= {r.rank} in "
                  f"{r.seconds:.2f} s")
        return 0
    if args.command == "verify":
        return _verify(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(Path(args.workdir), parse_size(args.size, "--size", 1))
    if args.command == "analyze":
        from ..analysis.cli import dispatch as analyze

        return analyze(args)
    if args.command in ("sweep", "convert") or getattr(args, "greedy", False):
        from .cli_soups import dispatch

        return dispatch(args)
    from ..methods.merge import interpolate, merge, soup

    options = {"dtype": args.dtype, "max_shard_size": args.max_shard_size,
               "threads": args.threads, "memory_budget": args.memory_budget,
               "include": args.include, "exclude": args.exclude,
               "check_finite": args.check_finite, "overwrite": args.overwrite,
               "int_policy": args.int_policy,
               "dry_run": args.dry_run, "progress": not args.quiet,
               "device": args.device}
    if args.resume:
        options["resume"] = True
    if getattr(args, "distributed", None):
        options["distributed"] = True
    if getattr(args, "trust_pickle", False):
        options["trust_pickle"] = True
    if args.kernel != "auto":
        options["kernel"] = args.kernel
    if args.command == "merge" and args.config is not None:
        from ..methods.recipe import load_recipe, run_recipe

        if args.checkpoints:
            raise LadleError("--config takes the models from the recipe; do not also list "
                             f"checkpoints ({' '.join(args.checkpoints)})")
        recipe = load_recipe(args.config)
        if args.dtype is None:
            del options["dtype"]
        if options.pop("trust_pickle", False):
            raise LadleError("--config recipes read safetensors models only (no --trust-pickle)")
        report = run_recipe(recipe, args.out, **options)
    elif not args.checkpoints:
        raise LadleError(f"{args.command}: no checkpoints given")
    elif args.command == "soup":
        report = soup(args.checkpoints, args.out, weights=args.weights, **options)
    elif args.alpha is not None:
        if len(args.checkpoints) != 2:
            raise LadleError(f"--alpha takes exactly two checkpoints (THETA0 THETA1), "
                             f"got {len(args.checkpoints)}")
        report = interpolate(args.checkpoints[0], args.checkpoints[1], args.alpha, args.out,
                             **options)
    else:
        report = merge(args.checkpoints, args.weights, args.out, **options)
    if not args.quiet and not args.dry_run and _is_rank0():
        print(f"wrote {report.out}: {report.n_tensors} tensors in {report.n_shards} shard(s), "
              f"read {format_size(report.bytes_read)}, wrote {format_size(report.bytes_written)} "
              f"in {report.seconds:.2f} s ({report.gb_per_s:.2f} GB/s, {report.threads} "
              f"threads, {report.kernel} kernels"
              + (f"; {report.host_sums} tensor(s) computed on the host: F64 or block-scaled "
                 f"FP8" if report.host_sums else "") + ")")
    return 0


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _inspect(path: str) -> int:
    from ..formats.checkpoint import open_checkpoint

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


def _verify(args: argparse.Namespace) -> int:
    from ..engine.verify import verify

    report = verify(args.out, inputs=args.inputs, weights=args.weights, sample=args.sample,
                    check_finite=args.check_finite)
    for problem in report.problems:
        print(f"ladle: verify: {problem}", file=sys.stderr)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problem(s))"
    print(f"{report.path}: {status}: {report.n_tensors} tensors in {report.n_files} file(s) "
          f"parsed, {report.checksums_checked} checksum(s) matched, "
          f"{report.tensors_recomputed} tensor(s) recomputed"
          + (f", {report.tensors_scanned_finite} scanned for NaN/Inf"
             if args.check_finite else ""))
    return 0 if report.ok else 1
