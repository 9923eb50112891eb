"""Generate Llama-shaped sharded bf16 checkpoints (HF layout, config.json
included) from random numbers, for the demo, tests and benchmarks. Needs torch
and safetensors (the ``test`` extra); nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    n_layers: int

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.n_heads * self.n_kv_heads

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes in the order transformers writes them."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for n in range(self.n_layers):
            p = f"model.layers.{n}."
            out |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                    p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                    p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                    p + "post_attention_layernorm.weight": (h,)}
        out |= {"model.norm.weight": (h,), "lm_head.weight": (self.vocab, h)}
        return out

    def n_params(self) -> int:
        total = 0
        for shape in self.tensors().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def config(self) -> dict:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": self.hidden, "intermediate_size": self.intermediate,
                "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads,
                "num_hidden_layers": self.n_layers, "vocab_size": self.vocab,
                "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def llama_shape_for(n_bytes: int) -> LlamaShape:
    """A TinyLlama-like shape whose bf16 checkpoint is about ``n_bytes``."""
    if n_bytes >= 400 * 10**6:
        base = LlamaShape(2048, 5632, 32, 4, 32000, 1)
    else:
        base = LlamaShape(512, 1408, 8, 2, 8000, 1)
    per_layer = base.n_params() - LlamaShape(*_fields(base)[:5], 0).n_params()
    fixed = base.n_params() - per_layer
    n_layers = max(1, round((n_bytes / 2 - fixed) / per_layer))
    return LlamaShape(*_fields(base)[:5], n_layers)


def _fields(s: LlamaShape) -> tuple:
    return (s.hidden, s.intermediate, s.n_heads, s.n_kv_heads, s.vocab, s.n_layers)


def write_llama_checkpoint(directory: str | Path, shape: LlamaShape, seed: int,
                           max_shard_bytes: int = 500 * 10**6) -> Path:
    """Write one random bf16 checkpoint in HF sharded layout; reuse a complete one."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    done_marker = directory / ".ladle-synthetic.json"
    spec = {"shape": _fields(shape), "seed": seed}
    if done_marker.exists() and json.loads(done_marker.read_text()) == spec:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.safetensors"):
        old.unlink()
    gen = torch.Generator().manual_seed(seed)
    groups: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, dims in shape.tensors().items():
        n_bytes = 2 * _numel(dims)
        if groups[-1] and size + n_bytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = dims
        size += n_bytes
    weight_map = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, dims in group.items():
            t = torch.randn(dims, generator=gen, dtype=torch.float32)
            scale = 1.0 if name.endswith("norm.weight") else 0.02
            tensors[name] = (t * scale + (1.0 if scale == 1.0 else 0.0)).to(torch.bfloat16)
        save_file(tensors, directory / fname, metadata={"format": "pt"})
        weight_map.update({name: fname for name in group})
        del tensors
    total = 2 * shape.n_params()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(shape.config(), indent=2))
    done_marker.write_text(json.dumps(spec))
    return directory


def _numel(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
