"""Fuzzing: hostile manifests and image bytes raise edgecls's own errors, never anything else."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecls.errors import EdgeclsError
from edgecls.manifest import SCHEMA, Manifest, load_manifest
from edgecls.preprocess import Preprocessing, decode_rgb

# Bounded: a few hundred examples each, no per-example deadline (CI machines vary), no example
# database written into the checkout.
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                          max_leaves=12)

VALID = Manifest("tflite", "int8", ["daisy", "roses"], Preprocessing.named("tf", (96, 96)),
                 input={"name": "x", "shape": [1, 96, 96, 3], "dtype": "uint8",
                        "quantization": {"scale": 0.0078125, "zero_point": 128}},
                 output={"name": "y", "shape": [1, 2], "dtype": "uint8", "activation": "softmax"},
                 verification={"accuracy": 0.9}).to_dict()


def _paths(d, prefix=()):
    """Every (path) to a value inside a nested manifest dict, lists included."""
    yield prefix
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


PATHS = [p for p in _paths(VALID) if p]


def _replace(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


def _only_edgecls_errors(doc):
    try:
        Manifest.from_dict(doc, "fuzzed.json")
    except EdgeclsError:
        pass


@FUZZ
@given(json_value)
def test_random_json_documents(doc):
    _only_edgecls_errors(doc)
    if isinstance(doc, dict):
        _only_edgecls_errors({**doc, "schema": SCHEMA})


@FUZZ
@given(st.sampled_from(PATHS), json_value)
def test_valid_manifest_with_one_field_replaced(path, value):
    """Type confusion one field at a time: the closest a hostile manifest gets to a valid one."""
    doc = _replace(VALID, path, value)
    try:
        manifest = Manifest.from_dict(doc, "fuzzed.json")
    except EdgeclsError as exc:
        assert "fuzzed.json" in str(exc)
        return
    # Whatever is accepted is usable: labels are strings, the size is a pair of positive ints.
    assert all(isinstance(x, str) for x in manifest.labels) and manifest.labels
    h, w = manifest.preprocessing.size
    assert h >= 1 and w >= 1


@FUZZ
@given(st.sampled_from([k for k in VALID if k != "schema"]))
def test_missing_field_or_null(key):
    doc = dict(VALID)
    del doc[key]
    _only_edgecls_errors(doc)
    _only_edgecls_errors({**VALID, key: None})


def test_string_labels_are_refused_not_split_into_characters():
    with pytest.raises(EdgeclsError, match="field 'labels' must be a non-empty list of strings"):
        Manifest.from_dict({**VALID, "labels": "daisy"}, "m.json")


def test_manifest_file_that_is_not_an_object(tmp_path):
    (tmp_path / "m.tflite.json").write_text("[1, 2]")
    with pytest.raises(EdgeclsError, match="expected a JSON object"):
        load_manifest(tmp_path / "m.tflite")
    (tmp_path / "m.tflite.json").write_text("[" * 100000)
    with pytest.raises(EdgeclsError, match="not valid JSON"):
        load_manifest(tmp_path / "m.tflite")


@pytest.fixture(scope="module")
def photo_bytes(assets):
    return {name: (assets / "images" / "imagenet-photos" / name).read_bytes() for name in ("parrot.jpg", "cat.bmp")}


@FUZZ
@given(st.binary(max_size=4096))
def test_random_image_bytes(data):
    try:
        rgb = decode_rgb(data, "fuzz.bin")
    except EdgeclsError:
        return
    assert rgb.dtype.name == "uint8" and rgb.ndim == 3 and rgb.shape[2] == 3


@FUZZ
@given(data=st.data())
def test_corrupted_real_images(photo_bytes, tmp_path, data):
    """Real JPEG and BMP files truncated and with bytes overwritten, decoded from disk."""
    name = data.draw(st.sampled_from(sorted(photo_bytes)))
    raw = bytearray(photo_bytes[name])
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut]
    for _ in range(data.draw(st.integers(0, 8))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / f"fuzzed{name[-4:]}"
    path.write_bytes(bytes(raw))
    try:
        picture = Preprocessing.named("tf", (32, 32)).load(path)
    except EdgeclsError:
        return
    assert picture.shape == (32, 32, 3)


@pytest.fixture(scope="module")
def tflite_bytes(coral):
    return (coral / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()


@FUZZ
@given(data=st.data())
def test_corrupted_tflite_models_are_refused_cleanly(tflite_bytes, data):
    """Truncated and byte-flipped TFLite files: the schema walk that runs before the interpreter
    raises ModelError or passes, never anything else."""
    from pathlib import Path

    from edgecls.engines.litert import check_flatbuffer

    raw = bytearray(tflite_bytes[: data.draw(st.integers(0, len(tflite_bytes)))])
    for _ in range(data.draw(st.integers(0, 6))):
        if raw:
            raw[data.draw(st.integers(0, min(len(raw), 8192) - 1))] = data.draw(st.integers(0, 255))
    try:
        check_flatbuffer(Path("fuzzed.tflite"), bytes(raw))
    except EdgeclsError as exc:
        assert "fuzzed.tflite" in str(exc)


@FUZZ
@given(data=st.data())
def test_onnx_graph_reader_never_raises(assets, data):
    """The ONNX protobuf walk that finds the final activation: truncated or flipped files give
    an answer or None (unknown), never an exception."""
    from edgecls.engines.onnx import final_activation

    raw = bytearray((assets / "models/onnx/mobilenetv2-12-int8.onnx").read_bytes()[:20000])
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    for _ in range(data.draw(st.integers(0, 6))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    assert final_activation(bytes(raw)) in (None, "softmax", "sigmoid", "none")


@FUZZ
@given(json_value)
def test_benchmark_reports_from_random_json(tmp_path_factory, doc):
    """`report compare` input: anything load_report accepts can be compared and rendered."""
    from edgecls.report import compare, load_report

    path = tmp_path_factory.mktemp("r") / "bench.json"
    for candidate in (doc, {"schema": "edgecls.bench/1", "host": {}, "results": doc},
                      {"schema": "edgecls.bench/1", "host": doc, "results": [{"name": "a", "latency_ms": doc}]}):
        path.write_text(json.dumps(candidate))
        try:
            report = load_report(path)
        except EdgeclsError:
            continue
        compare(report, report)
