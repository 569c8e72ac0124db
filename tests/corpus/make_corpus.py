#!/usr/bin/env python3
"""Writes the bad-input corpus of tests/corpus/ from the good files beside this script
(tiny.toml, tiny.safetensors, x.npy). Python standard library only. The expected error
of each file is in cases.toml, checked by tests/corpus.rs.

    python3 tests/corpus/make_corpus.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
BAD = os.path.join(HERE, "bad")


def write(name, data):
    os.makedirs(BAD, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    with open(os.path.join(BAD, name), mode) as f:
        f.write(data)


def read(name):
    with open(os.path.join(HERE, name), "rb") as f:
        return f.read()


def safetensors_parts():
    raw = read("tiny.safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def safetensors(header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def edited(edit):
    header, data = safetensors_parts()
    data = bytearray(data)
    edit(header, data)
    return safetensors(header, bytes(data))


def contiguous(header, data):
    """The tensors of `header` over `data`, laid out again one after another (no gaps)."""
    out_header, out = {}, b""
    for key in sorted(header, key=lambda k: header[k]["data_offsets"]):
        a, b = header[key]["data_offsets"]
        out_header[key] = dict(header[key], data_offsets=[len(out), len(out) + b - a])
        out += bytes(data[a:b])
    return safetensors(out_header, out)


def set_float(header, data, name, index, value):
    start = header[name]["data_offsets"][0] + 4 * index
    data[start : start + 4] = struct.pack("<f", value)


def retyped(name, dtype):
    """The good weights with tensor `name` stored, well-formed, in another dtype."""
    header, data = safetensors_parts()
    fmt = {"F16": "e", "F64": "d", "I64": "q"}[dtype]
    out_header, out = {}, b""
    for key in sorted(header):
        info = header[key]
        a, b = info["data_offsets"]
        values = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
        if key == name:
            chunk = struct.pack(f"<{len(values)}{fmt}", *[int(v) if fmt == "q" else v for v in values])
        else:
            chunk = data[a:b]
        out_header[key] = {
            "dtype": dtype if key == name else "F32",
            "shape": info["shape"],
            "data_offsets": [len(out), len(out) + len(chunk)],
        }
        out += chunk
    return safetensors(out_header, out)


def main():
    good = read("tiny.safetensors")
    # --- safetensors weights
    write("empty.safetensors", b"")
    write("short.safetensors", b"\x10\x00\x00")
    write("truncated_header.safetensors", struct.pack("<Q", 1000) + b'{"a":')
    write("oversized_header.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
    write("header_not_json.safetensors", struct.pack("<Q", 8) + b"not json")
    write("truncated_data.safetensors", good[: len(good) - 100])

    def past_end(header, data):
        header["fc.bias"]["data_offsets"] = [len(data) - 4, len(data) + 8]

    write("offsets_past_end.safetensors", edited(past_end))

    def length_mismatch(header, data):
        a, _ = header["conv1.weight"]["data_offsets"]
        header["conv1.weight"]["data_offsets"] = [a, a + 8]

    write("shape_length_mismatch.safetensors", edited(length_mismatch))
    write("f16.safetensors", retyped("bn1.weight", "F16"))
    write("f64.safetensors", retyped("fc.bias", "F64"))
    write("i64.safetensors", retyped("layer1.0.conv1.weight", "I64"))
    write("nan.safetensors", edited(lambda h, d: set_float(h, d, "conv1.weight", 5, float("nan"))))
    write("inf.safetensors", edited(lambda h, d: set_float(h, d, "fc.bias", 1, float("inf"))))

    header, data = safetensors_parts()
    del header["layer2.0.bn1.running_var"]
    write("missing_tensor.safetensors", contiguous(header, data))

    def extra(header, data):
        header["layer3.0.conv1.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
        data.extend(b"\0" * 4)

    write("extra_tensor.safetensors", edited(extra))

    def overlapping(header, data):
        # fc.bias's offsets moved onto the first tensor's bytes: two names, one storage.
        a, b = header["fc.bias"]["data_offsets"]
        header["fc.bias"]["data_offsets"] = [0, b - a]

    write("overlapping_tensors.safetensors", edited(overlapping))
    write("trailing_bytes.safetensors", good + b"\0" * 16)

    def transposed(header, data):
        header["fc.weight"]["shape"] = list(reversed(header["fc.weight"]["shape"]))

    write("transposed.safetensors", edited(transposed))

    # --- .npy inputs (the model takes [N, 2, 9, 7] float32)
    def npy(descr, shape, payload=None, fortran=False, magic=b"\x93NUMPY"):
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
            descr,
            "True" if fortran else "False",
            "".join(f"{d}, " for d in shape).rstrip(" ") if len(shape) != 1 else f"{shape[0]},",
        )
        pad = 64 - (10 + len(header) + 1) % 64
        header = header + " " * pad + "\n"
        count = 1
        for d in shape:
            count *= d
        size = int(descr[2:]) if descr[1] in "fi" else 4
        if payload is None:
            payload = b"\x00" * (count * size)
        return magic + b"\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload

    write("empty.npy", b"")
    write("f64.npy", npy("<f8", [1, 2, 9, 7]))
    write("i32.npy", npy("<i4", [1, 2, 9, 7]))
    write("big_endian.npy", npy(">f4", [1, 2, 9, 7]))
    write("rank3.npy", npy("<f4", [2, 9, 7]))
    write("wrong_shape.npy", npy("<f4", [1, 3, 9, 7]))
    write("fortran.npy", npy("<f4", [1, 2, 9, 7], fortran=True))
    write("bad_magic.npy", npy("<f4", [1, 2, 9, 7], magic=b"\x93NUMPX"))
    write("truncated.npy", npy("<f4", [1, 2, 9, 7], payload=b"\x00" * 100))

    # --- images
    write("empty.png", b"")
    write("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"garbage!" * 4)
    write("truncated.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb")
    write("text.jpg", "just text, not a picture\n")

    # --- specs
    base = read("tiny.toml").decode()
    write("zero_width.toml", base.replace("widths = [4, 8]", "widths = [0, 8]"))
    write("negative_size.toml", base.replace("input = [2, 9, 7]", "input = [2, -9, 7]"))
    write("absurd_size.toml", base.replace("input = [2, 9, 7]", "input = [3, 100000, 100000]"))
    write("zero_layers.toml", base.replace("layers = [1, 1]", "layers = [0, 1]"))
    write("unknown_key.toml", base + "depth = 18\n")
    write("unknown_block.toml", base.replace('"basic"', '"tiny"'))
    write("groups_with_basic.toml", base + "groups = 4\n")
    write("invalid.toml", base.replace("layers = [1, 1]", "layers = [1, 1"))
    write("empty.toml", "")
    write("zero_classes.toml", base.replace("num_classes = 3", "num_classes = 0"))
    write("too_many_blocks.toml", base.replace("layers = [1, 1]", "layers = [6000, 6000]"))
    write("huge_weights.toml", base.replace("widths = [4, 8]", "widths = [4, 40000]"))
    bottleneck = base.replace('"basic"', '"bottleneck"')
    write("huge_groups.toml", bottleneck + "groups = 1000000\n")
    write("overflowing_inner_width.toml", bottleneck + "groups = 16777216\nwidth_per_group = 16777216\n")
    os.makedirs(os.path.join(BAD, "a_directory.toml"), exist_ok=True)
    os.makedirs(os.path.join(BAD, "a_directory.safetensors"), exist_ok=True)
    for d in ("a_directory.toml", "a_directory.safetensors"):
        # git keeps no empty directories
        with open(os.path.join(BAD, d, ".keep"), "w") as f:
            f.write("")


if __name__ == "__main__":
    main()
