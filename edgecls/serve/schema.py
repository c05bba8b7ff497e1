"""The KServe v2 inference request, checked against its schema before anything reads it.

Open Inference Protocol (KServe v2), `$inference_request`:
`{"id": string?, "parameters": $parameters?, "inputs": [$request_input], "outputs": [$request_output]?}`,
`$request_input = {"name": string, "shape": [int], "datatype": string, "parameters": $parameters?,
"data": $tensor_data}` (or the binary tensor extension: `"parameters": {"binary_data_size": int}` and the
bytes after the JSON header), `$request_output = {"name": string, "parameters": $parameters?}`,
`$parameters = {string: string | number | bool}`.

Types are JSON's, strictly: a shape dimension is an integer, never `true` (Python's bool is an int);
FP32 data are numbers, never strings; BYTES elements are strings (base64) or `{"b64": string}`; a
binary length prefix lies within the body. Every violation is a `RequestError` (400) naming the
field — `inputs[0].shape[1]: expected a non-negative integer, got true` — never a 500.

A small typed validator rather than a JSON Schema library, by measurement (README, "Run it as a
service"; `bench/infer_validation.py`): on a 224x224x3 FP32 body (150,528 numbers) this takes 7 ms
flat and 26 ms nested, fastjsonschema 61-95 and 820 ms, jsonschema 5.3 and 12.3 s — where the
whole inference takes ~20 ms, and a JSON Schema validator would be the cheapest way to slow the
server down.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import chain
from typing import Any

from .images import RequestError

# KServe v2 tensor data types (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/).
KSERVE_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                    "FP16", "FP32", "FP64", "BYTES")
MAX_DIMS = 8
MAX_NESTING = 10
OUTPUT_NAME = "probabilities"
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")


def ascii_int(text: str | None) -> int | None:
    """A non-negative decimal integer written with ASCII digits only, else None (str.isdigit()
    accepts '²', which int() refuses, and '٣', which int() reads as 3)."""
    if text is None or not _ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)


@dataclass
class TensorInput:
    name: str
    datatype: str
    shape: list[int]
    data: list | None           # flat, every element of the datatype's JSON type; None: binary
    binary: bytes | None        # this input's bytes of the binary tensor extension

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class InferRequest:
    id: str | None
    input: TensorInput
    classification: int | None  # the classification extension's k, when an output asks for it


def _kind(value: Any) -> str:
    """A JSON value's kind, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return {type(None): "null", str: "a string", dict: "an object", list: "a list", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _bad(where: str, expected: str, value: Any) -> RequestError:
    return RequestError(400, f"{where}: expected {expected}, got {_kind(value)}")


def _is_int(value: Any) -> bool:
    return type(value) is int  # noqa: E721 - bool is a subclass of int and must not pass


def _parameters(value: Any, where: str) -> dict:
    """`$parameters`: an object whose values are strings, numbers or booleans."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise _bad(f"{where}.{key}", "a string, number or boolean", item)
    return value


def _unknown(doc: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise RequestError(400, f"{where}: unknown field {extra[0]!r}; expected {', '.join(sorted(allowed))}")


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON object and the bytes after it (binary tensor extension, `Inference-Header-Content-Length`)."""
    cut = len(body) if header_length is None else ascii_int(header_length)
    if cut is None or cut > len(body):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} does not fit the body "
                                f"({len(body)} bytes)")
    try:
        doc = json.loads(body[:cut])
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not a JSON inference request ({\"inputs\": [...]})") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "the inference request must be a JSON object with \"inputs\"")
    return doc, body[cut:]


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Parse and validate a whole inference request body (one input; outputs optional)."""
    return validate(*split_body(body, header_length))


def validate(doc: dict, binary: bytes = b"") -> InferRequest:
    """Validate a parsed request (`binary`: the bytes after its JSON) by the schema above."""
    _unknown(doc, _REQUEST_KEYS, "the request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id", "a string", request_id)
    _parameters(doc.get("parameters"), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise RequestError(400, "\"inputs\" must be a list of exactly one input: the image tensor, or BYTES images")
    tensor = _input(inputs[0], binary)
    return InferRequest(request_id, tensor, _classification(doc.get("outputs")))


def _input(doc: Any, binary: bytes) -> TensorInput:
    where = "inputs[0]"
    if not isinstance(doc, dict):
        raise _bad(where, "an object", doc)
    _unknown(doc, _INPUT_KEYS, where)
    name, kind, shape = doc.get("name"), doc.get("datatype"), doc.get("shape")
    if not isinstance(name, str):
        raise _bad(f"{where}.name", "a string", name)
    if kind not in KSERVE_DATATYPES:
        raise RequestError(400, f"{where}.datatype {kind!r}: expected one of {', '.join(KSERVE_DATATYPES)}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS:
        raise RequestError(400, f"{where}.shape: expected a list of 1 to {MAX_DIMS} non-negative integers")
    for i, d in enumerate(shape):
        if not _is_int(d) or d < 0:
            raise RequestError(400, f"{where}.shape[{i}]: expected a non-negative integer, got {json.dumps(d)[:40]}")
    size = _parameters(doc.get("parameters"), f"{where}.parameters").get("binary_data_size")
    tensor = TensorInput(name, kind, shape, None, None)
    if size is not None:
        if not _is_int(size) or size < 0:
            raise _bad(f"{where}.parameters.binary_data_size", "a non-negative integer", size)
        if "data" in doc:
            raise RequestError(400, f"{where}: give \"data\" or parameters.binary_data_size, not both")
        if size != len(binary):
            raise RequestError(400, f"{where}.parameters.binary_data_size is {size}, but {len(binary)} bytes follow "
                                    "the JSON header")
        tensor.binary = binary
    else:
        if binary:
            raise RequestError(400, f"{len(binary)} bytes follow the JSON header, but no input declares "
                                    "parameters.binary_data_size")
        tensor.data = _data(doc.get("data"), kind, f"{where}.data")
        if len(tensor.data) != tensor.count:
            raise RequestError(400, f"{where}.data has {len(tensor.data)} elements, shape {shape} needs "
                                    f"{tensor.count}")
    return tensor


def _element_check(kind: str) -> tuple[tuple[type, ...], str]:
    """The JSON types one element of `kind` may have (exact types: bool is not a number here)."""
    if kind == "BYTES":
        return (str, dict), "a base64 string or {\"b64\": string}"
    if kind == "BOOL":
        return (bool,), "true or false"
    return (int, float), f"a number ({kind})"


def _data(data: Any, kind: str, where: str) -> list:
    """`data` flattened (flat or nested row-major lists), each element of the datatype's JSON type."""
    if not isinstance(data, list):
        raise _bad(where, f"a list of {_element_check(kind)[1]} elements", data)
    allowed, expected = _element_check(kind)
    flat, depth = data, 0
    while flat and type(flat[0]) is list and all(type(v) is list for v in flat):  # one level of nesting at a time
        if depth >= MAX_NESTING:
            raise RequestError(400, f"{where}: nested deeper than {MAX_NESTING} lists")
        flat, depth = list(chain.from_iterable(flat)), depth + 1
    if not {type(v) for v in flat} <= set(allowed):  # irregular nesting or a wrong element: walked for its place
        flat = []
        _flatten(data, allowed, expected, where, flat, 0)
    if kind == "BYTES":
        for i, item in enumerate(flat):
            if isinstance(item, dict) and (set(item) != {"b64"} or not isinstance(item["b64"], str)):
                raise RequestError(400, f"{where}[{i}]: expected a base64 string or {{\"b64\": string}}")
    return flat


def _flatten(data: list, allowed: tuple[type, ...], expected: str, where: str, out: list, depth: int) -> None:
    if {type(v) for v in data} <= set(allowed):  # the common case, at C speed: a flat list of the right type
        out.extend(data)
        return
    if depth >= MAX_NESTING:
        raise RequestError(400, f"{where}: nested deeper than {MAX_NESTING} lists")
    for i, value in enumerate(data):
        if type(value) is list:
            _flatten(value, allowed, expected, f"{where}[{i}]", out, depth + 1)
        elif type(value) in allowed:
            out.append(value)
        else:
            raise _bad(f"{where}[{i}]", expected, value)


def _classification(outputs: Any) -> int | None:
    """The number of classes asked for as "score:index:label" strings, or None for probabilities."""
    if outputs is None:
        return None
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise RequestError(400, f"\"outputs\" must be a list of at most one output ({OUTPUT_NAME!r})")
    for i, out in enumerate(outputs):
        where = f"outputs[{i}]"
        if not isinstance(out, dict):
            raise _bad(where, "an object", out)
        _unknown(out, _OUTPUT_KEYS, where)
        if out.get("name") != OUTPUT_NAME:
            raise RequestError(400, f"{where}.name {out.get('name')!r}: this model has one output, {OUTPUT_NAME!r}")
        params = _parameters(out.get("parameters"), f"{where}.parameters")
        if "binary_data" in params and not isinstance(params["binary_data"], bool):
            raise _bad(f"{where}.parameters.binary_data", "true or false", params["binary_data"])
        k = params.get("classification")
        if k is not None:
            if not _is_int(k) or k < 1:
                raise RequestError(400, f"{where}.parameters.classification: expected a positive integer (the "
                                        f"number of classes to return), got {json.dumps(k)}")
            return k
    return None


def images(tensor: TensorInput, most: int) -> list[bytes]:
    """The pictures of a BYTES input: base64 in JSON, or the binary tensor extension's elements (each a
    4-byte little-endian length, then that many bytes, every length within binary_data_size); as
    many as the shape says, 1 to `most`."""
    import base64
    import binascii

    if not 1 <= tensor.count <= most:  # before walking the elements: 4 million empty ones held the event loop 5 s
        raise RequestError(400, f"send 1 to {most} images in one request, got {tensor.count}")
    if tensor.binary is not None:
        found = _binary_elements(tensor.binary, tensor.count + 1)
    else:
        found = []
        for i, item in enumerate((tensor.data or [])[: tensor.count + 1]):
            try:
                found.append(base64.b64decode(item["b64"] if isinstance(item, dict) else item, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(400, f"inputs[0].data[{i}] is not valid base64") from None
    if len(found) != tensor.count:
        many = f"more than {tensor.count}" if len(found) > tensor.count else str(len(found))
        raise RequestError(400, f"inputs[0]: {many} BYTES elements, shape {tensor.shape} needs {tensor.count}")
    if not 1 <= len(found) <= most:
        raise RequestError(400, f"send 1 to {most} images in one request, got {len(found)}")
    return found


def _binary_elements(data: bytes, most: int) -> list[bytes]:
    """The length-prefixed elements of `data`, at most `most` of them (the caller counts them)."""
    elements, at = [], 0
    while at < len(data) and len(elements) < most:
        if at + 4 > len(data):
            raise RequestError(400, f"inputs[0]: binary BYTES data ends inside a length prefix (at byte {at})")
        n = int.from_bytes(data[at : at + 4], "little")
        if at + 4 + n > len(data):
            raise RequestError(400, f"inputs[0]: binary BYTES element {len(elements)} claims {n} bytes, but only "
                                    f"{len(data) - at - 4} remain within binary_data_size")
        elements.append(data[at : at + 4 + n][4:])
        at += 4 + n
    return elements
