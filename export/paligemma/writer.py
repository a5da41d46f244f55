"""Writing the ONNX file one initializer at a time, each streamed in chunks from its source.

Why: onnx.save_model serializes a ModelProto that holds every weight, so a
checkpoint of N bytes needs a few times N of memory.  Here the graph (small)
is a ModelProto and the weights never are: with external data each tensor's
chunks go straight to ``NAME.onnx.data`` (at offsets that are multiples of
4096, as export/onnx_export.py writes them) and only its location enters the
proto; without, the protobuf framing of the graph's ``initializer`` fields is
written by hand around the chunks, its lengths known in advance from the
tensors' sizes.  Each tensor's stored bytes are hashed as they are written so
that the file read back can be checked bit for bit without a second copy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List

from ..onnx_export import EXTERNAL_ALIGNMENT, EXTERNAL_SIZE_THRESHOLD, ExportError

#: ModelProto.graph and GraphProto.initializer field numbers (onnx.proto).
MODEL_GRAPH_FIELD = 7
GRAPH_INITIALIZER_FIELD = 5
TENSOR_RAW_DATA_FIELD = 9


@dataclass
class StreamedTensor:
    """An initializer to write: its header, and its stored bytes as an iterable of chunks."""

    name: str
    dims: List[int]
    data_type: int  #: onnx.TensorProto data type
    nbytes: int
    chunks: Callable[[], Iterable[memoryview]]


def digest() -> "hashlib._Hash":
    """The hash that stands for a tensor's stored bytes in the read-back check."""
    return hashlib.sha256()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited_tag(field_number: int, length: int) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(length)


def _fields(message, keep: Callable[[int], bool]) -> bytes:
    """The serialization of ``message``'s fields whose numbers ``keep`` accepts."""
    part = type(message)()
    part.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        if not keep(descriptor.number):
            part.ClearField(descriptor.name)
    return part.SerializeToString()


def _header(tensor: StreamedTensor):
    from onnx import TensorProto

    proto = TensorProto(name=tensor.name, data_type=tensor.data_type)
    proto.dims.extend(tensor.dims)
    return proto


def _copy(tensor: StreamedTensor, out, hashes: Dict[str, str]) -> None:
    h, written = digest(), 0
    for chunk in tensor.chunks():
        out.write(chunk)
        h.update(chunk)
        written += len(chunk)
    if written != tensor.nbytes:
        raise ExportError(f"tensor {tensor.name}: {written} bytes written, {tensor.nbytes} expected")
    hashes[tensor.name] = h.hexdigest()


def _write_external(model, tensors: List[StreamedTensor], path: str, hashes: Dict[str, str]) -> None:
    """Tensors of at least EXTERNAL_SIZE_THRESHOLD bytes to ``path + ".data"``; the small ones inline."""
    import io

    import onnx
    from onnx import TensorProto

    data_path = path + ".data"
    location = os.path.basename(data_path)
    with open(data_path, "wb") as data:
        for tensor in tensors:
            proto = _header(tensor)
            if tensor.nbytes < EXTERNAL_SIZE_THRESHOLD:
                small = io.BytesIO()
                _copy(tensor, small, hashes)
                proto.raw_data = small.getvalue()
            else:
                offset = data.tell()
                data.write(b"\0" * (-offset % EXTERNAL_ALIGNMENT))
                offset = data.tell()
                _copy(tensor, data, hashes)
                proto.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", str(offset)),
                                   ("length", str(tensor.nbytes))):
                    proto.external_data.add(key=key, value=value)
            model.graph.initializer.append(proto)
    onnx.save_model(model, path)


def _write_inline(model, tensors: List[StreamedTensor], path: str, hashes: Dict[str, str],
                  raw_offsets: Dict[str, int]) -> None:
    """One protobuf file: the model's fields before and after ``graph``, the graph's before and after
    ``initializer``, and each initializer as its header then its raw_data streamed."""
    headers = [_header(t).SerializeToString() for t in tensors]
    bodies = [len(h) + len(_length_delimited_tag(TENSOR_RAW_DATA_FIELD, t.nbytes)) + t.nbytes
              for h, t in zip(headers, tensors)]
    graph_before = _fields(model.graph, lambda n: n < GRAPH_INITIALIZER_FIELD)
    graph_after = _fields(model.graph, lambda n: n > GRAPH_INITIALIZER_FIELD)
    graph_bytes = (len(graph_before) + len(graph_after)
                   + sum(len(_length_delimited_tag(GRAPH_INITIALIZER_FIELD, b)) + b for b in bodies))
    with open(path, "wb") as out:
        out.write(_fields(model, lambda n: n < MODEL_GRAPH_FIELD))
        out.write(_length_delimited_tag(MODEL_GRAPH_FIELD, graph_bytes))
        out.write(graph_before)
        for header, body, tensor in zip(headers, bodies, tensors):
            out.write(_length_delimited_tag(GRAPH_INITIALIZER_FIELD, body))
            out.write(header)
            out.write(_length_delimited_tag(TENSOR_RAW_DATA_FIELD, tensor.nbytes))
            raw_offsets[tensor.name] = out.tell()
            _copy(tensor, out, hashes)
        out.write(graph_after)
        out.write(_fields(model, lambda n: n > MODEL_GRAPH_FIELD))


def write_model(model, tensors: List[StreamedTensor], path: str, external: bool):
    """Writes ``model`` (a ModelProto without initializers) with ``tensors`` as its initializers, in order.

    external: the weights to ``path + ".data"`` (tensors under 1 KiB stay inline); ``model`` gets the
    initializers' headers.
    Returns ({tensor name: hex digest of its stored bytes}, {tensor name: offset of its raw bytes in
    ``path``}: the latter for a file written inline, else empty).
    """
    if len(model.graph.initializer):
        raise ExportError("the graph to write already holds initializers")
    for stale in (path, path + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    hashes: Dict[str, str] = {}
    raw_offsets: Dict[str, int] = {}
    if external:
        _write_external(model, tensors, path, hashes)
    else:
        _write_inline(model, tensors, path, hashes, raw_offsets)
    return hashes, raw_offsets


def checker_twin(model, tensors: List[StreamedTensor], path: str, raw_offsets: Dict[str, int]) -> str:
    """Writes ``path + ".twin.onnx"``: ``model`` (without initializers) whose initializers are the inline
    file ``path``'s raw bytes, referenced as external data; ``onnx.checker`` reads it without the weights."""
    import onnx
    from onnx import TensorProto

    twin = type(model)()
    twin.CopyFrom(model)
    for tensor in tensors:
        proto = _header(tensor)
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", os.path.basename(path)), ("offset", str(raw_offsets[tensor.name])),
                           ("length", str(tensor.nbytes))):
            proto.external_data.add(key=key, value=value)
        twin.graph.initializer.append(proto)
    twin_path = path + ".twin.onnx"
    onnx.save_model(twin, twin_path)
    return twin_path
