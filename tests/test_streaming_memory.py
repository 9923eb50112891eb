"""A merge that a whole-tensor implementation cannot pass: 256 MiB tensors merged
under a 32 MiB budget in a child process whose peak RSS must stay ≤ 192 MiB."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from child_env import child_env
from reference import combine

N_BIG = 64 * 2**20  # float32 elements: 256 MiB


def _write_big(path: Path, seed: int) -> None:
    header = {"big": {"dtype": "F32", "shape": [N_BIG], "data_offsets": [0, 4 * N_BIG]},
              "small": {"dtype": "F32", "shape": [3], "data_offsets": [4 * N_BIG, 4 * N_BIG + 12]}}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.writelines(rng.standard_normal(2**22, dtype=np.float32).tobytes() for _ in range(N_BIG // 2**22))
        f.write(np.ones(3, dtype=np.float32).tobytes())


CHILD = """
import sys, ladle
ladle.interpolate(sys.argv[1], sys.argv[2], 0.3, sys.argv[3], memory_budget="32MiB",
                  progress=False)
status = open("/proc/self/status").read()
print([l for l in status.splitlines() if l.startswith("VmHWM")][0].split()[1])
"""


def test_256mib_tensor_under_32mib_budget(tmp_path):
    a, b, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "o.safetensors"
    _write_big(a, 1)
    _write_big(b, 2)
    env = child_env()
    result = subprocess.run([sys.executable, "-c", CHILD, str(a), str(b), str(out)],
                            capture_output=True, text=True, env=env, check=True)
    peak_rss_kib = int(result.stdout.strip().splitlines()[-1])
    assert peak_rss_kib <= 192 * 1024, f"peak RSS {peak_rss_kib / 1024:.0f} MiB > 192 MiB"
    # Compare to the contract reference block by block (bounded memory here too).
    data_a, data_b, data_o = (np.memmap(p, dtype=np.uint8, mode="r") for p in (a, b, out))
    start = lambda d: 8 + struct.unpack("<Q", bytes(d[:8]))[0]
    sa, sb, so = start(data_a), start(data_b), start(data_o)
    header_out = json.loads(bytes(data_o[8:so]))
    ob, oe = header_out["big"]["data_offsets"]
    assert oe - ob == 4 * N_BIG
    block = 4 * 2**22
    for off in range(0, 4 * N_BIG, block):
        expected = combine([bytes(data_a[sa + off:sa + off + block]),
                            bytes(data_b[sb + off:sb + off + block])], ["F32", "F32"],
                           [0.7, 0.3], "F32")
        assert bytes(data_o[so + ob + off:so + ob + off + block]) == expected, off
