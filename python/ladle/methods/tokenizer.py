"""mergekit's ``tokenizer_source`` / ``tokenizer:`` recipes: the output vocabulary
(the base's, a model's, or the union of all) and every model's embedding rows
(``embed_tokens``, ``lm_head``) permuted into it before the merge.

Rules (mergekit's ``PermutedEmbeddings``), for each token of the output vocabulary:
a model that has the token contributes its own row, unless the token's ``tokens:``
entry says ``force: true``; otherwise the row is the token's default embedding:
its ``tokens:`` entry (``source: MODEL`` that model's row of the token,
``source: {kind: model_token, model, token | token_id}`` a given row,
``source: {kind: zero}`` zeros); else, when exactly one model has the token, that
model's row; when none has it, zeros; when the base has it, the base's row;
otherwise the mean of the rows of the models that have it. Rows added by
``pad_to_multiple_of`` are the mean of the model's other rows.

Permuted embeddings are written, row range by row range, to temporary
safetensors files next to the output (removed afterwards), and the merge reads
them instead of the models' own tensors: memory is one range of rows per model.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LadleValueError, LadleWarning
from ..formats.checkpoint import Checkpoint, TensorInfo
from .lora_apply import model_dir
from .mapping_keys import refuse_unknown_keys

EMBED_SUFFIXES = ("embed_tokens.weight", "lm_head.weight", "wte.weight",
                  "word_embeddings.weight", "tok_embeddings.weight", "embed_out.weight")
ROWS_PER_CHUNK_BYTES = 16 << 20


@dataclass
class TokenizerSpec:
    """A recipe's ``tokenizer_source`` or ``tokenizer:`` block."""

    source: str | Path  # "base", "union" or a model directory
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None
    block: bool = False  # given as a tokenizer: block (errors are never downgraded)


@dataclass
class Vocabulary:
    """The output tokenizer and, per model, output id -> the model's id (−1: absent)."""

    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    size: int  # rows of the output embeddings (padding included)
    n_tokens: int
    permutations: dict[Path, np.ndarray]
    vocabs: dict[Path, dict[str, int]]


def parse_tokenizer(data: Any, where: str, resolve) -> TokenizerSpec:
    """A ``tokenizer:`` block; ``resolve(ref, key)`` turns a model reference into a path."""
    if not isinstance(data, dict):
        raise LadleValueError(f"{where}tokenizer: expected a mapping")
    refuse_unknown_keys(data, ("source", "tokens", "pad_to_multiple_of"), f"{where}tokenizer: ")
    source = data.get("source", "union")
    if source not in ("base", "union"):
        source = resolve(source, "tokenizer.source")
    pad = data.get("pad_to_multiple_of")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
        raise LadleValueError(f"{where}tokenizer.pad_to_multiple_of must be a positive integer")
    tokens = {}
    for tok, cfg in (data.get("tokens") or {}).items():
        at = f"{where}tokenizer.tokens[{tok!r}]"
        if not isinstance(cfg, dict) or set(cfg) - {"source", "force"}:
            raise LadleValueError(f"{at}: expected a mapping with 'source' and/or 'force'")
        src = cfg.get("source")
        if isinstance(src, dict):
            kind = src.get("kind")
            if kind == "zero" and set(src) == {"kind"}:
                pass
            elif kind == "model_token" and set(src) <= {"kind", "model", "token", "token_id"} \
                    and "model" in src and (("token" in src) != ("token_id" in src)):
                src = {**src, "model": resolve(src["model"], f"{at}.source.model")}
            else:
                raise LadleValueError(f"{at}.source: expected {{kind: zero}} or {{kind: "
                                      f"model_token, model, token | token_id}}")
        elif src is not None:
            src = resolve(src, f"{at}.source")
        tokens[str(tok)] = {"source": src, "force": bool(cfg.get("force", False))}
    return TokenizerSpec(source, tokens, pad, block=True)


def _load(path: Path):
    """A local tokenizer through transformers, its log lines silenced (ladle reports
    problems itself, as one error)."""
    import transformers
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(model_dir(path)),
                                                          local_files_only=True)
    finally:
        logging.set_verbosity(level)


def _config_vocab_size(path: Path) -> int | None:
    try:
        value = json.loads((model_dir(path) / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def build_vocabulary(spec: TokenizerSpec, base: Path | None, models: list[Path]) -> Vocabulary:
    """The output tokenizer and the permutations (mergekit's ``build_tokenizer``)."""
    donor = base or models[0]
    tokenizers = {}
    for m in [donor, *models]:
        if m in tokenizers:
            continue
        try:
            tokenizers[m] = _load(m)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            raise LadleValueError(f"{m}: cannot load its tokenizer with transformers: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                  ) from None
    if spec.source == "base":
        out = _load(donor)
    elif spec.source == "union":
        out = _union(donor, tokenizers)
    else:
        out = _load(Path(spec.source))
    for tok in spec.tokens:
        out.add_tokens(tok)
    vocab_out = out.get_vocab()
    n_tokens = len(vocab_out)
    size = n_tokens
    if spec.pad_to_multiple_of and size % spec.pad_to_multiple_of:
        size += spec.pad_to_multiple_of - size % spec.pad_to_multiple_of
    permutations, vocabs = {}, {}
    for m, tok in tokenizers.items():
        vocab = tok.get_vocab()
        limit = _config_vocab_size(m) or len(vocab)
        p = np.full(n_tokens, -1, dtype=np.int64)
        for token, new_id in vocab_out.items():
            old = vocab.get(token, -1)
            if 0 <= old < limit:
                p[new_id] = old
        permutations[m] = p
        vocabs[m] = vocab
    return Vocabulary(out, size, n_tokens, permutations, vocabs)


def _union(donor: Path, tokenizers: dict[Path, Any]):
    """mergekit's union: the donor's tokenizer plus every other model's tokens
    (regular tokens first, then added tokens with their settings, first wins)."""
    out_vocab: dict[str, None] = {}
    added: dict[str, Any] = {}
    for m, tok in tokenizers.items():
        limit = _config_vocab_size(m) or tok.vocab_size
        decoder = tok.added_tokens_decoder
        added_names = {info.content for info in decoder.values()}
        for token, idx in tok.get_vocab().items():
            if idx < limit and token not in added_names:
                out_vocab.setdefault(token)
        for idx, info in decoder.items():
            if idx < limit:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: never mutate the donor's
        tokenizers[donor].save_pretrained(tmp)
        res = _load(Path(tmp))
    base_vocab = tokenizers[donor].get_vocab()
    for token in out_vocab:
        if token not in added and token not in base_vocab:
            res.add_tokens(token)
    for info in added.values():
        res.add_tokens(info)
    return res


def embedding_names(ckpt: Checkpoint) -> list[str]:
    return [n for n, t in ckpt.tensors.items() if n.endswith(EMBED_SUFFIXES) and len(t.shape) == 2]


def _row_sources(spec: TokenizerSpec, vocab: Vocabulary, models: list[Path], base: Path | None
                 ) -> dict[int, tuple[list[tuple[Path, int]], bool]]:
    """Default embedding of each token that needs one: output id -> ([(model, row)],
    force) — an empty list is zeros, several rows are averaged."""
    vocab_out = vocab.tokenizer.get_vocab()
    out: dict[int, tuple[list[tuple[Path, int]], bool]] = {}
    for token, new_id in vocab_out.items():
        have = [m for m in models if vocab.permutations[m][new_id] >= 0]
        cfg = spec.tokens.get(token)
        if cfg is not None and cfg["source"] is not None:
            src = cfg["source"]
            if isinstance(src, dict) and src["kind"] == "zero":
                rows = []
            elif isinstance(src, dict):
                model = _member(src["model"], list(vocab.permutations), token)
                row = src.get("token_id")
                if row is None:
                    row = vocab.vocabs[model].get(src["token"])
                    if row is None:
                        raise LadleValueError(f"tokenizer.tokens[{token!r}]: token "
                                              f"{src['token']!r} is not in {model}'s vocabulary")
                rows = [(model, int(row))]
            else:
                model = _member(src, list(vocab.permutations), token)
                if vocab.permutations[model][new_id] < 0:
                    raise LadleValueError(f"tokenizer.tokens[{token!r}]: {model} does not have "
                                          f"this token")
                rows = [(model, int(vocab.permutations[model][new_id]))]
            out[new_id] = (rows, cfg["force"])
            continue
        force = bool(cfg and cfg["force"])
        if len(have) == len(models) and not force:
            continue  # every model has its own row
        if len(have) == 1:
            rows = [(have[0], int(vocab.permutations[have[0]][new_id]))]
        elif not have:
            warnings.warn(f"token {token!r} is in no model's vocabulary; its rows are zero",
                          LadleWarning, stacklevel=3)
            rows = []
        elif base is not None and base in have:
            rows = [(base, int(vocab.permutations[base][new_id]))]
        else:
            rows = [(m, int(vocab.permutations[m][new_id])) for m in have]
        out[new_id] = (rows, force)
    return out


def _member(model: Path, models: list[Path], token: str) -> Path:
    for m in models:
        if Path(m).resolve() == Path(model).resolve():
            return m
    raise LadleValueError(f"tokenizer.tokens[{token!r}]: {model} is not one of the merged models")


def _as_f32(info: TensorInfo, mm: np.ndarray, rows) -> np.ndarray:
    """Rows of a mapped tensor as fp32 (bf16 widened exactly)."""
    raw = mm[rows]
    if info.dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round fp32 to ``dtype`` to nearest even (NaN stays NaN)."""
    if dtype == "BF16":
        bits = x.astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)
    return x.astype(_NP[dtype])


_NP = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def _mapped(info: TensorInfo) -> np.ndarray:
    _mapped_dtype(info)
    return np.memmap(info.file, dtype=_NP[info.dtype], mode="r", offset=info.offset,
                     shape=info.shape)


def permute_embeddings(spec: TokenizerSpec, vocab: Vocabulary, ckpts: dict[Path, Checkpoint],
                       base: Path | None, tmpdir: Path,
                       contributors: Callable[[str], list[Path]] | None = None
                       ) -> dict[Path, Checkpoint]:
    """Views of ``ckpts`` whose embeddings are the permuted ones, written into
    ``tmpdir`` (one safetensors file per model) one range of rows at a time.

    ``contributors(name)`` are the models merged into that tensor (default: all);
    as in mergekit, they and the base decide a token's default row."""
    from .. import _core

    models = list(ckpts)
    names = embedding_names(ckpts[models[0]])
    defaults = {}
    for name in names:
        group = list(contributors(name)) if contributors else models
        if base is not None and base not in group:
            group.append(base)
        defaults[name] = _row_sources(spec, vocab, group, base)
    views = {}
    for k, m in enumerate(models):
        ckpt = ckpts[m]
        entries, offset = [], 0
        for name in names:
            info = ckpt.tensors.get(name)
            if info is None:
                continue
            shape = [vocab.size, info.shape[1]]
            n_bytes = math.prod(shape) * np.dtype(_NP[_mapped_dtype(info)]).itemsize
            entries.append((name, info.dtype, shape, offset, offset + n_bytes))
            offset += n_bytes
        header = _core.serialize_header(entries, [("format", "pt")])
        path = tmpdir / f"embeddings-{k}.safetensors"
        with open(path, "wb") as fh:
            fh.write(header)
            for name, _, shape, _, _ in entries:
                _write_rows(fh, name, shape, vocab, defaults[name], ckpts, m)
        permuted = {name: TensorInfo(name, dtype, tuple(shape), path, len(header) + begin,
                                     end - begin)
                    for name, dtype, shape, begin, end in entries}
        views[m] = replace(ckpt, tensors={**ckpt.tensors, **permuted},
                           file_sizes={**ckpt.file_sizes, path: path.stat().st_size})
    return views


def _mapped_dtype(info: TensorInfo) -> str:
    if info.dtype not in _NP:
        raise LadleValueError(f"{info.file}: embedding '{info.name}' has dtype {info.dtype}; "
                              f"only float embeddings can be permuted")
    return info.dtype


def _write_rows(fh, name: str, shape: list[int], vocab: Vocabulary, defaults, ckpts, model
                ) -> None:
    """One model's permuted embedding, streamed in ranges of output rows."""
    info = ckpts[model].tensors[name]
    mm = _mapped(info)
    others = {m: _mapped(c.tensors[name]) for m, c in ckpts.items() if name in c.tensors}
    infos = {m: c.tensors[name] for m, c in ckpts.items() if name in c.tensors}
    perm = vocab.permutations[model]
    dim = shape[1]
    step = max(1, ROWS_PER_CHUNK_BYTES // (4 * dim))
    total = np.zeros(dim, dtype=np.float64)
    for lo in range(0, vocab.n_tokens, step):
        ids = np.arange(lo, min(vocab.n_tokens, lo + step))
        src = perm[ids]
        rows = np.zeros((len(ids), dim), dtype=np.float32)
        own = src >= 0
        for i, new_id in enumerate(ids):
            d = defaults.get(int(new_id))
            if d is not None and (d[1] or not own[i]):
                own[i] = False
                picked = [_as_f32(infos[m], others[m], [r])[0] for m, r in d[0]
                          if m in others]
                if picked:
                    acc = np.float32(0)
                    for row in picked:  # fp32 sum in model order, one division
                        acc = acc + row
                    rows[i] = acc / np.float32(len(picked))
        if own.any():
            rows[own] = _as_f32(info, mm, src[own])
        total += rows.astype(np.float64).sum(axis=0)
        out = _from_f32(rows, info.dtype)
        fh.write(out.tobytes())
    if vocab.size > vocab.n_tokens:
        mean = (total / vocab.n_tokens).astype(np.float32)
        pad = np.broadcast_to(mean, (vocab.size - vocab.n_tokens, dim))
        fh.write(_from_f32(np.ascontiguousarray(pad), info.dtype).tobytes())


def with_vocabulary(config: dict[str, Any], vocab: Vocabulary) -> dict[str, Any]:
    """config.json with ``vocab_size`` set to the output's embedding rows."""
    out = json.loads(json.dumps(config))
    holder = out if "vocab_size" in out or "text_config" not in out else out["text_config"]
    holder["vocab_size"] = vocab.size
    return out


def scratch_dir(dest: Path) -> Path:
    """A fresh directory beside the output for the permuted embeddings (same
    filesystem; a unique name, so nothing of the user's is touched)."""
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.ladle-tokens-", dir=dest.parent))


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
