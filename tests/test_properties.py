"""Property tests (hypothesis): any shapes, dtypes, weights, shard layouts and
chunk sizes give the contract's bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import ladle

from reference import combine, random_raw
from st_io import read_checkpoint, write_raw, write_sharded

FLOATS = ["F32", "F16", "BF16"]

shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3)
weights = st.floats(-4, 4, allow_nan=False, width=32)


@given(
    tensor_shapes=st.lists(shapes, min_size=1, max_size=5),
    in_dtype=st.sampled_from(FLOATS),
    out_dtype=st.sampled_from(FLOATS),
    ws=st.lists(weights, min_size=1, max_size=5),
    n_shards=st.integers(1, 3),
    max_shard=st.sampled_from([64, 1000, 10**9]),
    budget=st.sampled_from([1, 2**20]),
    seed=st.integers(0, 2**16),
)
def test_merge_matches_reference(tensor_shapes, in_dtype, out_dtype, ws, n_shards, max_shard,
                                 budget, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = []
        for k in range(len(ws)):
            tensors = {}
            for j, shape in enumerate(tensor_shapes):
                n = int(np.prod(shape)) if shape else 1
                tensors[f"m.{j}.w"] = (in_dtype, shape, random_raw(rng, n, in_dtype, True))
            inputs.append(tensors)
            if n_shards == 1:
                write_raw(tmp / f"in{k}.safetensors", tensors)
            else:
                write_sharded(tmp / f"in{k}", tensors, n_shards)
        paths = [tmp / (f"in{k}.safetensors" if n_shards == 1 else f"in{k}")
                 for k in range(len(ws))]
        ladle.merge(paths, ws, tmp / "out", dtype=out_dtype, max_shard_size=max_shard,
                    memory_budget=budget, progress=False)
        got = read_checkpoint(tmp / "out")
        assert set(got) == set(inputs[0])
        for name in inputs[0]:
            expected = combine([t[name][2] for t in inputs], [in_dtype] * len(ws), ws,
                               out_dtype)
            assert got[name][2] == expected, name
            assert got[name][1] == inputs[0][name][1]
