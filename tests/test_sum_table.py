"""Same-layout merges planned in C++ (ladle.engine.sum_plan, issue 14: 10^6-tensor
checkpoints): the bulk plan must write byte for byte what the general Python path
writes, fall back to it for anything special, and word mismatches as it does.
``include="*"`` selects every tensor but forces the general path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ladle
from ladle import _core
from ladle.engine.plan import build_plan, describe
from ladle.engine.verify import verify
from ladle.errors import MismatchError
from ladle.formats.checkpoint import open_checkpoint
from ladle.formats.tensor_info import TensorInfo

from st_io import ITEM, write_raw

# name -> (dtype, shape): every float dtype, a scalar, and a name needing JSON escapes.
LAYOUT = {"emb.weight": ("BF16", [5, 3]), "blk.0.w": ("F32", [4, 2]), "blk.0.b": ("F16", [4]),
          "head": ("F64", [3]), "scale": ("F32", []), 'odd "name"\n': ("F16", [2, 2])}
NP = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _raw(dtype: str, shape: list[int], rng: np.random.Generator) -> bytes:
    x = rng.standard_normal(int(np.prod(shape))).astype(np.float32)
    if dtype == "BF16":
        return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return x.astype(NP[dtype]).tobytes()


def _checkpoints(tmp: Path, n: int, layout: dict = LAYOUT) -> list[Path]:
    paths = []
    for k in range(n):
        rng = np.random.default_rng(k)
        tensors = {name: (d, s, _raw(d, s, rng)) for name, (d, s) in layout.items()}
        paths.append(write_raw(tmp / f"in{k}.safetensors", tensors))
    return paths


def _files(out: Path) -> dict[str, bytes]:
    if out.is_file():
        return {out.name: out.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("n_inputs, weights, options, out_name", [
    (2, [0.3, 0.7], {}, "out.safetensors"),
    (3, [0.5, 0.0, -1.25], {"dtype": "bf16"}, "out.safetensors"),
    (2, [1.0, 0.0], {"dtype": "f32"}, "out.safetensors"),
    (3, [0.2, 0.3, 0.5], {"max_shard_size": 40}, "out_dir"),  # several shards + index
])
def test_bulk_plan_writes_what_the_general_path_writes(tmp_path, n_inputs, weights, options,
                                                       out_name):
    inputs = _checkpoints(tmp_path, n_inputs)
    (tmp_path / "bulk").mkdir()
    (tmp_path / "general").mkdir()
    bulk = ladle.merge(inputs, weights, tmp_path / "bulk" / out_name, progress=False, **options)
    general = ladle.merge(inputs, weights, tmp_path / "general" / out_name, include="*",
                          progress=False, **options)
    assert bulk.plan.table is not None and general.plan.table is None
    written = _files(tmp_path / "bulk" / out_name)
    assert written == _files(tmp_path / "general" / out_name)
    assert (bulk.n_tensors, bulk.n_shards, bulk.bytes_read) == (
        general.n_tensors, general.n_shards, general.bytes_read)
    if out_name == "out_dir":
        assert len(written) > 2  # shards and model.safetensors.index.json
    assert verify(tmp_path / "bulk" / out_name, [str(p) for p in inputs], sample=-1).ok


def test_bulk_plan_describes_the_same_plan(tmp_path):
    ckpts = [open_checkpoint(p) for p in _checkpoints(tmp_path, 2)]
    bulk = build_plan(ckpts, [0.25, 0.75], max_shard_bytes=40)
    general = build_plan(ckpts, [0.25, 0.75], max_shard_bytes=40, include=["*"])
    assert bulk.table is not None and general.table is None
    assert list(bulk.tensors) == list(general.tensors)
    assert bulk.tensors[-1] == general.tensors[-1] and bulk.tensors[1:3] == general.tensors[1:3]
    assert [(s.file_name, s.header, s.n_bytes) for s in bulk.shards] == [
        (s.file_name, s.header, s.n_bytes) for s in general.shards]
    assert (bulk.bytes_read, bulk.data_n_bytes, bulk.weight_map(), bulk.metadata) == (
        general.bytes_read, general.data_n_bytes, general.weight_map(), general.metadata)
    assert [list(s.tensors) for s in bulk.shards] == [list(s.tensors) for s in general.shards]
    assert describe(bulk) == describe(general)
    with pytest.raises(IndexError):
        bulk.tensors[len(LAYOUT)]


@pytest.mark.parametrize("change, message", [
    ({"blk.0.b": ("F16", [5])}, r"tensor 'blk.0.b': shape \[5\] in {b} differs from \[4\] in {a}"),
    ({"head": ("I64", [3])}, r"tensor 'head': dtype I64 in {b} differs from F64 in {a}"),
    ({"extra": ("F32", [1])}, r"{B}: 1 extra tensor\(s\) not in {A}: 'extra'"),
])
def test_a_mismatch_still_names_file_and_tensor(tmp_path, change, message):
    a = _checkpoints(tmp_path, 1)[0]
    b = write_raw(tmp_path / "b.safetensors",
                  {name: (d, s, bytes(ITEM[d] * int(np.prod(s))))
                   for name, (d, s) in {**LAYOUT, **change}.items()})
    pattern = message.format(a=a, b=b, A=a, B=b).replace(".", r"\.")
    with pytest.raises(MismatchError, match=pattern):
        ladle.merge([a, b], [0.5, 0.5], tmp_path / "out.safetensors", progress=False)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("layout_b", [
    {**LAYOUT, "head": ("F32", [3])},        # dtypes differ across inputs: widest rule
    {**LAYOUT, "steps": ("I64", [])},        # an integer tensor: the int policy
])
def test_special_layouts_take_the_general_path(tmp_path, layout_b):
    layout_a = {**LAYOUT, **({"steps": ("I64", [])} if "steps" in layout_b else {})}
    rng = np.random.default_rng(0)
    raw = {"I64": lambda s: np.arange(max(1, int(np.prod(s))), dtype=np.int64).tobytes()}
    paths = [write_raw(tmp_path / f"{k}.safetensors",
                       {n: (d, s, raw[d](s) if d in raw else _raw(d, s, rng))
                        for n, (d, s) in layout.items()})
             for k, layout in enumerate((layout_a, layout_b))]
    report = ladle.merge(paths, [0.5, 0.5], tmp_path / "out.safetensors", progress=False)
    assert report.plan.table is None
    assert report.n_tensors == len(layout_b)


def test_read_header_builds_tensor_infos(tmp_path):
    path = _checkpoints(tmp_path, 1)[0]
    plain = _core.read_header(str(path))
    infos = _core.read_header(str(path), TensorInfo, path)["tensors"]
    start = plain["data_start"]
    assert infos == {name: TensorInfo(name, dtype, shape, path, start + begin, end - begin)
                     for name, dtype, shape, begin, end in plain["tensors"]}
    assert all(type(i) is TensorInfo and i.file is path for i in infos.values())
    assert list(infos) == [e[0] for e in plain["tensors"]]


def test_many_tiny_writes_land_exactly(tmp_path):
    """Shard writes of tiny tensors are gathered and written in runs: whatever order
    two workers finish them in, with large tensors between, every byte lands."""
    rng = np.random.default_rng(7)
    sizes = rng.choice([1, 3, 4, 100, 5000, 70_000, 1_200_000], size=400,
                       p=[.3, .2, .2, .15, .1, .04, .01])
    data = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    order = rng.permutation(len(sizes))  # the file layout differs from the job order
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out_offsets = np.empty(len(sizes), dtype=np.int64)
    out_offsets[order] = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])
    header = _core.serialize_header([("blob", "U8", [int(sizes.sum())], 0, int(sizes.sum()))],
                                    [])
    plan = _core.Plan()
    src = plan.add_memory_source("data", data.ctypes.data, data.nbytes)
    path = tmp_path / "out.safetensors"
    sink = plan.add_file_sink(str(path), len(header) + data.nbytes, header)
    plan.add_jobs([(f"t{i}", "copy", int(n), sink, len(header) + int(out_offsets[i]), "U8",
                    [(src, int(starts[i]), "U8", 1.0)]) for i, n in enumerate(sizes)])
    _core.run(plan, threads=2)
    plan.finish_sinks()
    want = np.empty_like(data)
    for i, n in enumerate(sizes):
        want[out_offsets[i]:out_offsets[i] + n] = data[starts[i]:starts[i] + n]
    written = path.read_bytes()
    assert written[:len(header)] == header and written[len(header):] == want.tobytes()
