"""Generate Llama-shaped, sharded bf16 checkpoints of about a given size (HF layout).

Each checkpoint directory holds ``config.json`` (loadable by ``transformers.LlamaConfig``),
``model-0000i-of-0000N.safetensors`` shards and ``model.safetensors.index.json``. Values are
random bf16 drawn from N(0, 0.02) (norm weights around 1). Only numpy, safetensors and json
are needed, so the demo can reuse this module.

Example:
    >>> from llama_checkpoints import generate_checkpoints
    >>> dirs = generate_checkpoints("bench-work/ckpts", 2, 1_000_000_000)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

INDEX_NAME = "model.safetensors.index.json"
MANIFEST_SUFFIX = ".complete.json"  # sidecar written last: marks a finished checkpoint
_BLOCK_ELEMS = 1 << 22  # random values generated per numpy call
_MAX_SHARD_BYTES = 1_000_000_000


@dataclass(frozen=True)
class LlamaShape:
    """Dimensions of a Llama decoder (defaults: TinyLlama-1.1B's)."""

    hidden: int = 2048
    intermediate: int = 5632
    n_heads: int = 32
    n_kv_heads: int = 4
    vocab: int = 32000
    n_layers: int = 1

    @property
    def fixed_bytes(self) -> int:
        """bf16 bytes of the embedding, lm_head and final norm."""
        return 2 * (2 * self.vocab * self.hidden + self.hidden)

    @property
    def layer_bytes(self) -> int:
        """bf16 bytes of one decoder layer."""
        kv = self.hidden // self.n_heads * self.n_kv_heads
        n = 2 * self.hidden * self.hidden + 2 * kv * self.hidden
        n += 3 * self.hidden * self.intermediate + 2 * self.hidden
        return 2 * n

    @property
    def n_bytes(self) -> int:
        """bf16 bytes of all tensors."""
        return self.fixed_bytes + self.n_layers * self.layer_bytes


# Largest first; the first whose embeddings + 2 layers fit the requested size is used, so
# tiny sizes (CI smoke runs) still get several layers and shards.
PRESETS = (
    LlamaShape(),
    LlamaShape(hidden=1024, intermediate=2816, n_heads=16, n_kv_heads=4, vocab=32000),
    LlamaShape(hidden=128, intermediate=352, n_heads=4, n_kv_heads=2, vocab=4096),
)


def llama_shape(n_bytes: int) -> LlamaShape:
    """Pick dimensions and a layer count giving about ``n_bytes`` of bf16 weights.

    Args:
        n_bytes: wanted checkpoint size in bytes.

    Returns:
        The Llama (TinyLlama) shape when at least two of its layers fit, else a smaller one.
    """
    preset = next((p for p in PRESETS if p.fixed_bytes + 2 * p.layer_bytes <= n_bytes),
                  PRESETS[-1])
    n_layers = max(1, round((n_bytes - preset.fixed_bytes) / preset.layer_bytes))
    return LlamaShape(**{**asdict(preset), "n_layers": n_layers})


def tensor_shapes(shape: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in HF ``LlamaForCausalLM`` order."""
    h, i = shape.hidden, shape.intermediate
    kv = h // shape.n_heads * shape.n_kv_heads
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab, h))]
    for n in range(shape.n_layers):
        p = f"model.layers.{n}."
        out += [
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (shape.vocab, h))]
    return out


def llama_config(shape: LlamaShape) -> dict:
    """A ``config.json`` dict for ``transformers.LlamaConfig``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "num_hidden_layers": shape.n_layers,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def plan_shards(shape: LlamaShape, max_shard_bytes: int | None = None) -> list[list[str]]:
    """Group tensor names into shards of at most ``max_shard_bytes`` (default: two or more
    shards of at most 1 GB, so even tiny checkpoints are sharded)."""
    if max_shard_bytes is None:
        max_shard_bytes = min(_MAX_SHARD_BYTES, math.ceil(shape.n_bytes / 2))
    shards: list[list[str]] = [[]]
    size = 0
    for name, dims in tensor_shapes(shape):
        n = 2 * math.prod(dims)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


class _Bf16Source:
    """Random bf16 bit patterns: uniform draws from a table of 65536 N(0, 1) samples,
    which is ~5x faster than drawing float32 normals and keeping their high 16 bits."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        normal = np.sort(self.rng.standard_normal(1 << 16, dtype=np.float32))
        self.table = normal

    def fill(self, out: np.ndarray, mean: float, std: float) -> None:
        table = _bf16_bits(self.table * np.float32(std) + np.float32(mean))
        flat = out.reshape(-1)
        for start in range(0, flat.size, _BLOCK_ELEMS):
            block = flat[start:start + _BLOCK_ELEMS]
            idx = self.rng.integers(0, 1 << 16, size=block.size, dtype=np.uint16)
            np.take(table, idx, out=block)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """High 16 bits of float32 values (bf16 by truncation) as uint16."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _save_bf16(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Write uint16 arrays as a BF16 safetensors file (safetensors' own serializer)."""
    from safetensors import TensorSpec, serialize_file  # safetensors.numpy has no bf16

    specs = {name: TensorSpec(dtype="bfloat16", shape=list(a.shape), data_ptr=a.ctypes.data,
                              data_len=a.nbytes) for name, a in tensors.items()}
    serialize_file(specs, str(path), metadata=metadata)


def generate_checkpoint(path: str | os.PathLike, n_bytes: int, seed: int = 0,
                        max_shard_bytes: int | None = None) -> Path:
    """Write one Llama-shaped sharded bf16 checkpoint, or reuse a finished identical one.

    Memory stays at about one shard: each shard is generated, saved and freed in turn.

    Args:
        path: checkpoint directory to create.
        n_bytes: approximate size of the tensor data.
        seed: random seed (different seeds give different weights).
        max_shard_bytes: shard size bound (default: >= 2 shards of <= 1 GB).

    Returns:
        The checkpoint directory.
    """
    path = Path(path)
    shape = llama_shape(n_bytes)
    shards = plan_shards(shape, max_shard_bytes)
    manifest_path = path.with_name(path.name + MANIFEST_SUFFIX)
    wanted = {"shape": asdict(shape), "seed": seed, "shards": shards}
    if _is_complete(path, manifest_path, wanted):
        return path
    manifest_path.unlink(missing_ok=True)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    dims = dict(tensor_shapes(shape))
    source = _Bf16Source(seed)
    n = len(shards)
    weight_map: dict[str, str] = {}
    files: dict[str, int] = {}
    for k, names in enumerate(shards):
        file_name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name in names:
            arr = np.empty(dims[name], dtype=np.uint16)
            norm = name.endswith("norm.weight")
            source.fill(arr, mean=1.0 if norm else 0.0, std=0.02)
            tensors[name] = arr
            weight_map[name] = file_name
        _save_bf16(tensors, path / file_name, {"format": "pt"})
        del tensors
        files[file_name] = (path / file_name).stat().st_size
    index = {"metadata": {"total_size": shape.n_bytes}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    (path / "config.json").write_text(json.dumps(llama_config(shape), indent=2) + "\n")
    manifest_path.write_text(json.dumps({**wanted, "files": files}) + "\n")
    return path


def _is_complete(path: Path, manifest_path: Path, wanted: dict) -> bool:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in wanted} != json.loads(json.dumps(wanted)):
        return False
    files = manifest.get("files", {})
    return (path / INDEX_NAME).is_file() and (path / "config.json").is_file() and all(
        (path / f).is_file() and (path / f).stat().st_size == size for f, size in files.items())


def generate_checkpoints(workdir: str | os.PathLike, n: int, n_bytes: int,
                         prefix: str = "ckpt") -> list[Path]:
    """Generate (or reuse) ``n`` checkpoints ``workdir/{prefix}-{k}`` with seeds ``0..n-1``.

    Args:
        workdir: parent directory.
        n: number of checkpoints.
        n_bytes: approximate size of each.
        prefix: directory name prefix.

    Returns:
        The checkpoint directories, in seed order.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return [generate_checkpoint(workdir / f"{prefix}-{k}", n_bytes, seed=k) for k in range(n)]


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The ``*.safetensors`` files of a checkpoint directory (or the file itself)."""
    path = Path(path)
    return [path] if path.is_file() else sorted(path.glob("*.safetensors"))
