"""Regenerate the malicious safetensors files of this directory and
``attacks.json``, the table of what each must raise.

Run from the repository root: ``python tests/data/attacks/make_attacks.py``.
Each entry: file name -> (bytes, error class name, regex fragments the message
must contain besides the file name). Attacks that need the local file system
(symlinks, absolute paths, sparse 100 MB files) are built by tests/test_attacks.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).parent
U64_MAX = 2**64 - 1


def prefix(n: int) -> bytes:
    return struct.pack("<Q", n)


def st(header: str | bytes | dict, data: bytes = b"", length: int | None = None) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return prefix(len(header) if length is None else length) + header + data


def t(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def attacks() -> dict[str, tuple[bytes, str, list[str]]]:
    deep = "[" * 20_000 + "]" * 20_000
    return {
        # --- the 8-byte length prefix
        "header_len_u64_max": (st("{}", length=U64_MAX), "FormatError",
                               ["header length 18446744073709551615", "100 MB"]),
        "header_len_2_63": (st("{}", length=2**63), "FormatError",
                            ["header length 9223372036854775808"]),
        "header_len_past_eof": (st('{"a":1}', length=4096), "FormatError",
                                ["header length 4096 exceeds the file size 15"]),
        "header_len_zero": (st(b"", b"\0" * 8, length=0), "FormatError",
                            ["does not start with"]),
        "file_shorter_than_prefix": (b"\x10\0\0", "FormatError", ["truncated: 3 bytes"]),
        "header_not_object": (st("[1,2]"), "FormatError", ["does not start with '\\{'"]),
        # --- offsets
        "offsets_wrap_around": (st({"w": t("F32", [1], U64_MAX - 3, 0)}, b"\0" * 4),
                                "FormatError",
                                ["tensor 'w'", "18446744073709551612", "end before"]),
        "offsets_wrap_sum": (st({"w": t("F32", [2], U64_MAX - 3, 4)}, b"\0" * 8),
                             "FormatError", ["tensor 'w'", "18446744073709551612"]),
        "offsets_huge_begin": (st({"w": t("F32", [1], 2**64 - 8, 2**64 - 4)}, b"\0" * 4),
                               "FormatError", ["tensor 'w'", "18446744073709551608"]),
        "offsets_past_eof": (st({"w": t("F32", [1024], 0, 4096)}, b"\0" * 8), "FormatError",
                             ["tensor 'w'", "4096", "exceed the data buffer of 8 bytes"]),
        "offsets_not_integer": (st({"w": t("F32", [1], 0.0, 4)}, b"\0" * 4), "FormatError",
                                ["tensor 'w'", "data_offsets entry '0.0'"]),
        "offsets_negative": (st({"w": t("F32", [1], -4, 0)}, b"\0" * 4), "FormatError",
                             ["tensor 'w'", "'-4'"]),
        "offsets_beyond_u64": (st('{"w":{"dtype":"F32","shape":[1],'
                                  '"data_offsets":[0,18446744073709551620]}}', b"\0" * 4),
                               "FormatError", ["tensor 'w'", "18446744073709551620"]),
        "overlapping_tensors": (st({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 4, 12)},
                                   b"\0" * 12),
                                "FormatError", ["tensor 'b'", r"\[4, 12\)", "overlap", "8"]),
        "aliased_tensors": (st({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 0, 8)}, b"\0" * 8),
                            "FormatError", ["tensor 'b'", r"\[0, 8\)", "overlap"]),
        "hole_between_tensors": (st({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)},
                                    b"\0" * 12),
                                 "FormatError", ["tensor 'b'", "hole after byte 4"]),
        "trailing_bytes": (st({"a": t("F32", [1], 0, 4)}, b"\0" * 64), "FormatError",
                           ["cover 4 bytes but the data buffer holds 64"]),
        "size_disagrees_with_shape": (st({"w": t("F32", [3], 0, 8)}, b"\0" * 8), "FormatError",
                                      ["tensor 'w'", "hold 8 bytes", "needs 12"]),
        # --- shapes
        "shape_product_overflow": (st({"w": t("F32", [2**32, 2**32], 0, 0)}), "FormatError",
                                   ["tensor 'w'", "4294967296", "overflows 64 bits"]),
        "shape_product_overflow_3d": (st({"w": t("U8", [2**22, 2**21, 2**22], 0, 0)}),
                                      "FormatError", ["tensor 'w'", "4194304", "overflows"]),
        "shape_bytes_overflow": (st({"w": t("F32", [2**62], 0, 0)}), "FormatError",
                                 ["tensor 'w'", "4611686018427387904", "overflows 64 bits"]),
        "shape_bytes_overflow_f64": (st({"w": t("F64", [2**31, 2**30], 0, 0)}), "FormatError",
                                     ["tensor 'w'", "2305843009213693952", "overflows"]),
        "shape_zero_times_huge": (st({"w": t("F32", [0, 2**64 - 1], 0, 16)}, b"\0" * 16),
                                  "FormatError", ["tensor 'w'", "hold 16 bytes", "needs 0"]),
        "shape_dim_beyond_u64": (st('{"w":{"dtype":"F32","shape":[18446744073709551616],'
                                    '"data_offsets":[0,4]}}', b"\0" * 4),
                                 "FormatError", ["tensor 'w'", "18446744073709551616"]),
        "shape_negative": (st({"w": t("F32", [-1], 0, 4)}, b"\0" * 4), "FormatError",
                           ["tensor 'w'", "shape entry '-1'"]),
        "shape_float": (st({"w": t("F32", [1e3], 0, 4000)}, b"\0" * 4000), "FormatError",
                        ["tensor 'w'", "'1000.0'"]),
        "subbyte_partial_byte": (st({"w": t("F4", [3], 0, 2)}, b"\0" * 2), "FormatError",
                                 ["3 elements of F4 do not fill whole bytes"]),
        # --- keys and JSON structure
        "duplicate_tensor_key": (st('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                    '"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                                    b"\0" * 8),
                                 "FormatError", ['duplicate key "w"', "at byte"]),
        "duplicate_field_key": (st('{"w":{"dtype":"F32","dtype":"I32","shape":[1],'
                                   '"data_offsets":[0,4]}}', b"\0" * 4),
                                "FormatError", ['duplicate key "dtype"']),
        "duplicate_metadata_key": (st('{"__metadata__":{"a":"1","a":"2"}}'), "FormatError",
                                   ['duplicate key "a"']),
        "duplicate_key_by_escape": (st('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                       '"\\u0077":{"dtype":"F32","shape":[1],'
                                       '"data_offsets":[4,8]}}', b"\0" * 8),
                                    "FormatError", ['duplicate key "w"']),
        "deeply_nested_array": (st('{"a":' + deep + "}"), "FormatError",
                                ["nesting deeper than 64"]),
        "deeply_nested_metadata": (st('{"__metadata__":{"a":' + deep + "}}"), "FormatError",
                                   ["nesting deeper than 64"]),
        "deeply_nested_objects": (st('{"a":' * 10_000 + "1" + "}" * 10_000), "FormatError",
                                  ["nesting deeper than 64"]),
        "metadata_not_strings": (st({"__metadata__": {"a": {"b": [1] * 10_000}}}),
                                 "FormatError", ["value of 'a' is a JSON object"]),
        "metadata_huge_value_then_bad_tensor": (
            st({"__metadata__": {"blob": "A" * 65_536}, "w": t("F32", [1], 0, 8)}, b"\0" * 8),
            "FormatError", ["tensor 'w'", "needs 4"]),
        "invalid_utf8_key": (st(b'{"\xff\xfe":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                                b"\0" * 4), "FormatError", ["invalid UTF-8"]),
        "overlong_utf8": (st(b'{"\xc0\xaf":1}'), "FormatError", ["overlong UTF-8"]),
        "lone_surrogate": (st('{"\\ud800":1}'), "FormatError", ["unpaired surrogate"]),
        "nul_in_header": (st(b'{"w\0":1}'), "FormatError", ["control character"]),
        "trailing_garbage": (st('{} {}'), "FormatError", ["trailing characters"]),
        "unterminated_string": (st('{"w'), "FormatError", ["unterminated string"]),
        "unknown_dtype": (st({"w": t("F128", [1], 0, 16)}, b"\0" * 16), "FormatError",
                          ["tensor 'w'", "unknown dtype 'F128'"]),
        "unknown_field": (st({"w": {**t("F32", [1], 0, 4), "evil": 1}}, b"\0" * 4),
                          "FormatError", ["tensor 'w'", "unknown field 'evil'"]),
        "missing_offsets": (st({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "FormatError",
                            ["tensor 'w'", "missing field 'data_offsets'"]),
        "three_offsets": (st({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}},
                             b"\0" * 8), "FormatError", ["tensor 'w'", r"\[BEGIN, END\]"]),
    }


def main() -> None:
    table = {}
    for name, (data, error, fragments) in attacks().items():
        (HERE / f"{name}.safetensors").write_bytes(data)
        table[f"{name}.safetensors"] = {"error": error, "mentions": fragments}
    (HERE / "attacks.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(table)} attack files to {HERE}")


if __name__ == "__main__":
    main()
