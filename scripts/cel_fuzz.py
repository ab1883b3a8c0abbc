#!/usr/bin/env python3
"""Differential fuzzing of Gantry's CEL evaluator against cel-expr-python (Google's C++ CEL).

Generates random, well-formed CEL expressions, evaluates each with both implementations and reports
every expression where they disagree: a different value, a different type, or an error on one side
only. Exits 1 when there is any disagreement. Usage: cel_fuzz.py GANTRY_BINARY [COUNT] [SEED]
"""
import base64
import json
import math
import random
import subprocess
import sys

from cel_expr_python import cel

INTS = ["0", "1", "-1", "2", "7", "-3", "42", "9223372036854775807", "-9223372036854775808", "100"]
UINTS = ["0u", "1u", "2u", "7u", "18446744073709551615u", "42u"]
DOUBLES = ["0.0", "1.5", "-2.25", "3.0", "1e10", "-0.5", "2.0"]
STRINGS = ["''", "'a'", "'abc'", "'héllo'", "'A-b_c'", "'42'", "'true'", "'1.5'"]


class Gen:
    def __init__(self, rng):
        self.rng = rng

    def pick(self, items):
        return self.rng.choice(items)

    def expr(self, depth=0):
        kind = self.pick(["int", "uint", "double", "string", "bool", "list", "map"] if depth < 3 else ["int", "string", "bool"])
        return getattr(self, kind)(depth)

    def int(self, d):
        if d > 3 or self.rng.random() < 0.3:
            return self.pick(INTS)
        return self.pick([
            lambda: f"({self.int(d + 1)} {self.pick(['+', '-', '*', '/', '%'])} {self.int(d + 1)})",
            lambda: f"-{self.int(d + 1)}",
            lambda: f"size({self.string(d + 1)})",
            lambda: f"size({self.list(d + 1)})",
            lambda: f"int({self.pick([self.uint(d + 1), self.double(d + 1), self.pick(STRINGS)])})",
            lambda: f"({self.bool(d + 1)} ? {self.int(d + 1)} : {self.int(d + 1)})",
        ])()

    def uint(self, d):
        if d > 3 or self.rng.random() < 0.4:
            return self.pick(UINTS)
        return self.pick([
            lambda: f"({self.uint(d + 1)} {self.pick(['+', '-', '*', '/', '%'])} {self.uint(d + 1)})",
            lambda: f"uint({self.int(d + 1)})",
        ])()

    def double(self, d):
        if d > 3 or self.rng.random() < 0.4:
            return self.pick(DOUBLES)
        return self.pick([
            lambda: f"({self.double(d + 1)} {self.pick(['+', '-', '*', '/'])} {self.double(d + 1)})",
            lambda: f"double({self.pick([self.int(d + 1), self.uint(d + 1)])})",
        ])()

    def string(self, d):
        if d > 3 or self.rng.random() < 0.4:
            return self.pick(STRINGS)
        return self.pick([
            lambda: f"({self.string(d + 1)} + {self.string(d + 1)})",
            lambda: f"string({self.pick([self.int(d + 1), self.uint(d + 1), self.pick(['true', 'false'])])})",
            lambda: f"({self.bool(d + 1)} ? {self.string(d + 1)} : {self.string(d + 1)})",
        ])()

    def bool(self, d):
        if d > 3 or self.rng.random() < 0.2:
            return self.pick(["true", "false"])
        num = lambda: self.pick([self.int, self.uint, self.double])(d + 1)
        return self.pick([
            lambda: f"({num()} {self.pick(['==', '!=', '<', '<=', '>', '>='])} {num()})",
            lambda: f"({self.string(d + 1)} {self.pick(['==', '<', '>='])} {self.string(d + 1)})",
            lambda: f"({self.bool(d + 1)} {self.pick(['&&', '||'])} {self.bool(d + 1)})",
            lambda: f"!{self.bool(d + 1)}",
            lambda: f"{self.string(d + 1)}.{self.pick(['contains', 'startsWith', 'endsWith'])}({self.string(d + 1)})",
            lambda: f"({self.int(d + 1)} in {self.list(d + 1)})",
            lambda: f"{self.list(d + 1)}.{self.pick(['all', 'exists', 'exists_one'])}(x, x {self.pick(['>', '==', '<'])} {self.int(d + 1)})",
            lambda: f"has({self.map(d + 1)}.a)",
        ])()

    def list(self, d):
        if d > 3 or self.rng.random() < 0.3:
            return "[" + ", ".join(self.pick(INTS) for _ in range(self.rng.randint(0, 4))) + "]"
        return self.pick([
            lambda: f"({self.list(d + 1)} + {self.list(d + 1)})",
            lambda: f"{self.list(d + 1)}.map(x, x {self.pick(['+', '*', '-'])} {self.int(d + 1)})",
            lambda: f"{self.list(d + 1)}.filter(x, x {self.pick(['>', '<', '=='])} {self.int(d + 1)})",
        ])()

    def map(self, d):
        # No bool keys: Python dicts (the reference's output) fold True into 1.
        keys = self.rng.sample(["'a'", "'b'", "'c'", "1", "2u"], self.rng.randint(0, 3))
        return "{" + ", ".join(f"{k}: {self.pick([self.int, self.string, self.bool])(d + 2)}" for k in keys) + "}"


def to_vector(value):
    """cel-expr-python Value -> the conformance vector shape Gantry prints."""
    t = value.type()
    v = value.value()
    if t == cel.Type.ERROR:
        return {"error": str(v)}
    if t == cel.Type.NULL:
        return {"null": True}
    if t == cel.Type.BOOL:
        return {"bool": v}
    if t == cel.Type.INT:
        return {"int": str(v)}
    if t == cel.Type.UINT:
        return {"uint": str(v)}
    if t == cel.Type.DOUBLE:
        return {"double": "NaN" if math.isnan(v) else ("Infinity" if v == math.inf else "-Infinity" if v == -math.inf else v)}
    if t == cel.Type.STRING:
        return {"string": v}
    if t == cel.Type.BYTES:
        return {"bytes": base64.b64encode(v).decode()}
    if t.name().startswith("LIST"):
        return {"list": [to_vector(item) for item in v]}
    if t.name().startswith("MAP"):
        return {"map": [[to_vector(k) if hasattr(k, "type") else to_vector_plain(k), to_vector(item)] for k, item in v.items()]}
    return {"other": str(v)}


def to_vector_plain(key):
    if isinstance(key, bool):
        return {"bool": key}
    if isinstance(key, int):
        return {"int": str(key)}
    return {"string": key}


def normalize(vector):
    """Maps compare regardless of order; the reference reports uint keys as Python ints."""
    if "map" in vector:
        def key(k):
            return {"int": k["uint"]} if "uint" in k else normalize(k)
        return {"map": sorted(([key(k), normalize(v)] for k, v in vector["map"]), key=json.dumps)}
    if "list" in vector:
        return {"list": [normalize(v) for v in vector["list"]]}
    return vector


def main():
    binary = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    gen = Gen(random.Random(seed))
    expressions = [gen.bool(0) if i % 3 == 0 else gen.expr(0) for i in range(count)]
    env = cel.NewEnv()
    theirs = []
    for expression in expressions:
        try:
            theirs.append(to_vector(env.compile(expression, disable_check=True).eval()))
        except Exception as error:  # noqa: BLE001 - any CEL error is an error result
            theirs.append({"error": str(error)})
    run = subprocess.run([binary, "cel", "batch"], input="\n".join(expressions) + "\n", capture_output=True, text=True, check=True)
    ours = [json.loads(line) for line in run.stdout.splitlines()]
    disagreements = 0
    for expression, mine, reference in zip(expressions, ours, theirs):
        if "error" in mine and "error" in reference:
            continue
        if normalize(mine) != normalize(reference):
            disagreements += 1
            print(f"DIFF {expression}\n  gantry: {json.dumps(mine)}\n  cel-cpp: {json.dumps(reference)}")
    print(f"{count - disagreements} passed, {disagreements} failed, 0 skipped")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
