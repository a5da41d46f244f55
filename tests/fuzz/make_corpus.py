"""Writes the seed corpus of the ONNX reader's fuzz target (tests/fuzz/corpus/).

Small files that reach every branch of the reader the fuzzer should start
from: each data type in raw_data and in its typed field (packed, and unpacked
as older writers emit it), external data in the fuzz target's scratch folder
(weights.bin, sub/weights.bin, empty.bin, and the places it must refuse),
metadata, opset imports, and hand-made hostile messages. Most files come from
the onnx package, so they are valid ONNX as onnx itself writes it.

    python tests/fuzz/make_corpus.py   # needs onnx (pip install ".[dev]")

The files are committed; rerun this only to change the seeds.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"

# What the fuzz target writes beside each input (onnx_reader_fuzzer.cc).
WEIGHTS = bytes((i * 7) % 256 for i in range(4096))


def model_bytes(tensors, metadata=None, opsets=None):
    graph = helper.make_graph([], "weights", [], [], initializer=tensors)
    model = helper.make_model(graph, producer_name="pali-engine-fuzz",
                              opset_imports=opsets or [helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def external(name, data_type, dims, location, offset=None, length=None):
    tensor = TensorProto(name=name, data_type=data_type, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))
    return tensor


def typed(name, array):
    data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor(name, data_type, list(array.shape), array.reshape(-1).tolist())


# The protobuf wire format by hand, for what the onnx package never writes.
def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, wire_type, payload):
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def hand_made_model(*tensor_messages):
    graph = b"".join(field(5, 2, t) for t in tensor_messages)
    return field(1, 0, varint(8)) + field(7, 2, graph)


def seeds():
    rng = np.random.default_rng(7)
    every_dtype = {
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f64": rng.standard_normal((3,)),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "i8": np.array([-128, 0, 127], np.int8),
        "u8": np.array([0, 1, 255], np.uint8),
        "i16": np.array([-32768, 7, 32767], np.int16),
        "i32": np.array([[-(2**31), 2**31 - 1]], np.int32),
        "i64": np.array([-(2**63), 2**63 - 1], np.int64),
        "bool": np.array([True, False, True]),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    yield "raw_every_dtype.onnx", model_bytes(
        [numpy_helper.from_array(a, n) for n, a in every_dtype.items()],
        metadata={"pali.config": '{"d_model": 8}', "note": "caf\u00e9 \u2603 \U0001f600"},
        opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    yield "typed_every_dtype.onnx", model_bytes([typed(n, a) for n, a in every_dtype.items()])
    bf16 = helper.make_tensor("bf16", TensorProto.BFLOAT16, [2], [1.0, -2.5])
    yield "typed_bfloat16.onnx", model_bytes([bf16, numpy_helper.from_array(np.ones(3, np.float32), "f32")])
    yield "external_weights.onnx", model_bytes([
        external("whole", TensorProto.FLOAT, [1024], "weights.bin"),
        external("middle", TensorProto.INT16, [3, 4], "weights.bin", offset=100, length=24),
        external("tail", TensorProto.UINT8, [96], "weights.bin", offset=4000),
        external("sub", TensorProto.FLOAT, [16], "sub/weights.bin", offset=0, length=64),
        external("nothing", TensorProto.FLOAT, [0], "empty.bin"),
    ], metadata={"pali.config": "{}"})
    for name, location in (("outside_link", "outside.bin"), ("fifo", "fifo.bin"), ("folder", "sub"),
                           ("missing", "missing.bin"), ("parent", "../secret.bin"), ("absolute", "/etc/hostname")):
        yield f"external_{name}.onnx", model_bytes([external("w", TensorProto.UINT8, [4], location, length=4)])
    yield "external_past_end.onnx", model_bytes(
        [external("w", TensorProto.FLOAT, [8], "weights.bin", offset=4090, length=32)])
    inline = numpy_helper.from_array(np.arange(4, dtype=np.float32), "f32")
    yield "duplicate_metadata.onnx", model_bytes([inline], metadata={"a": "1"}) + field(
        14, 2, field(1, 2, b"a") + field(2, 2, b"2"))
    unpacked_float = field(1, 0, varint(3)) + field(2, 0, varint(1)) + field(8, 2, b"uf") + b"".join(
        field(4, 5, np.float32(v).tobytes()) for v in (1.0, -2.0, 3.5))
    unpacked_int64 = field(1, 0, varint(2)) + field(2, 0, varint(7)) + field(8, 2, b"ui") + b"".join(
        field(7, 0, varint(v)) for v in (5, 2**64 - 1))
    unpacked_double = field(2, 0, varint(11)) + field(8, 2, b"ud") + field(10, 1, np.float64(0.25).tobytes())
    yield "typed_unpacked.onnx", hand_made_model(unpacked_float, unpacked_int64, unpacked_double)
    segmented = field(1, 0, varint(1)) + field(2, 0, varint(1)) + field(3, 2, field(1, 0, b"\x00")) + field(
        8, 2, b"s") + field(9, 2, b"\0\0\0\0")
    yield "segmented.onnx", hand_made_model(segmented)
    # From tests/test_fuzz.py: lengths past the end, overlong varints, bad dims, group wire types.
    yield "hostile_graph_length.onnx", b"\x3a\xff\xff\xff\xff\x0f"
    yield "hostile_overlong_varint.onnx", b"\x3a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"
    yield "hostile_negative_dim.onnx", hand_made_model(
        field(1, 0, varint(2**64 - 1)) + field(2, 0, varint(1)) + field(8, 2, b"d"))
    yield "hostile_group.onnx", b"\x0b\x0c"


def main():
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.iterdir():
        old.unlink()
    for name, data in seeds():
        (CORPUS / name).write_bytes(data)
        print(f"{len(data):6d}  {name}")


if __name__ == "__main__":
    main()
