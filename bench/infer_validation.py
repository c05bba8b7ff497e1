"""How to validate a KServe v2 inference body: edgecls' typed validator (edgecls/serve/schema.py)
against JSON Schema libraries, on the body that costs most: one 224x224x3 FP32 tensor as JSON
(150,528 numbers, flat and nested row-major).

Per candidate, in a fresh process each (numpy already imported, as in the server): import time, compile time (a schema made into a
validator), the best of 5 validations of the flat and the nested body, and the process's peak
RSS; and whether it refuses `true` as a shape dimension and a string among the numbers. The JSON
Schema is the same request schema (draft 7; data elements numbers, recursively nested). The
libraries need not be installed in edgecls' environment: `--python` names an interpreter that has
them, e.g.

    python -m venv /tmp/sv && /tmp/sv/bin/pip install numpy fastjsonschema jsonschema
    PYTHONPATH=$PWD python bench/infer_validation.py --python /tmp/sv/bin/python
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

SCHEMA = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 0}},
                "datatype": {"enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                      "INT64", "FP16", "FP32", "FP64", "BYTES"]},
                "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
                "data": {"type": "array"}},
            "if": {"properties": {"datatype": {"const": "BYTES"}}},
            "then": {"properties": {"data": {"items": {"anyOf": [
                {"type": "string"}, {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}}]}}}},
            "else": {"properties": {"data": {"$ref": "#/definitions/numbers"}}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object", "properties": {
                "classification": {"type": "integer", "minimum": 1}, "binary_data": {"type": "boolean"}}}}}}},
    "definitions": {"numbers": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"$ref": "#/definitions/numbers"}]}}},
}

CHILD = r'''
import json, resource, sys, time
which, schema = sys.argv[1], json.loads(sys.argv[2])
import numpy  # noqa: F401 - the server has it loaded already: not the validator's cost
t0 = time.perf_counter()
if which == "edgecls":
    from edgecls.serve import schema as mod
    t1 = time.perf_counter()
    check = mod.validate
    t2 = time.perf_counter()
elif which == "fastjsonschema":
    import fastjsonschema
    t1 = time.perf_counter()
    check = fastjsonschema.compile(schema)
    t2 = time.perf_counter()
else:
    import jsonschema
    t1 = time.perf_counter()
    check = jsonschema.Draft7Validator(schema).validate
    t2 = time.perf_counter()
flat = [0.5] * (224 * 224 * 3)
nested = [[[[0.5] * 3 for _ in range(224)] for _ in range(224)]]
docs = {name: {"inputs": [{"name": "input", "shape": [1, 224, 224, 3], "datatype": "FP32", "data": data}]}
        for name, data in (("flat", flat), ("nested", nested))}
times = {}
for name, doc in docs.items():
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        check(doc)
        runs.append(time.perf_counter() - start)
    times[name] = min(runs) * 1e3
def refuses(change):
    doc = json.loads(json.dumps(docs["flat"]))
    change(doc)
    try:
        check(doc)
        return False
    except Exception:
        return True
bool_dim = refuses(lambda d: d["inputs"][0]["shape"].__setitem__(0, True))
string = refuses(lambda d: d["inputs"][0]["data"].__setitem__(5, "0.5"))
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "compile_ms": (t2 - t1) * 1e3, "flat_ms": times["flat"],
                  "nested_ms": times["nested"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "refuses_true_dim": bool_dim, "refuses_string": string}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter with the libraries (and numpy)")
    args = parser.parse_args()
    print("| validator | import ms | compile ms | flat body ms | nested body ms | peak RSS MB | refuses `true` dim | "
          "refuses a string |\n|---|---|---|---|---|---|---|---|")
    for which in ("edgecls", "fastjsonschema", "jsonschema"):
        done = subprocess.run([args.python, "-c", CHILD, which, json.dumps(SCHEMA)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {which} | not measured: {done.stderr.strip().splitlines()[-1][:80]} |")
            continue
        r = json.loads(done.stdout)
        print(f"| {which} | {r['import_ms']:.0f} | {r['compile_ms']:.1f} | {r['flat_ms']:.1f} | {r['nested_ms']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['refuses_true_dim']} | {r['refuses_string']} |")


if __name__ == "__main__":
    main()
