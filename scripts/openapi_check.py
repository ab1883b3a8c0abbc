#!/usr/bin/env python3
"""Checks recorded API answers against docs/openapi.yaml: each line of the input file is
{"method", "path", "status", "contentType", "body"}. The path must match a documented path, the
status be documented for it, and a JSON body validate against that status's schema. Prints one
line per fault and exits 1 on any."""
import json
import re
import sys

import jsonschema
import yaml


def resolve(node, spec):
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolve(target, spec)
        out = {}
        for key, value in node.items():
            out[key] = resolve(value, spec)
        # OpenAPI 3.0 `nullable` as JSON Schema; exclusiveMinimum as a flag.
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        if out.get("exclusiveMinimum") is True:
            out["exclusiveMinimum"] = out.pop("minimum", 0)
        elif out.get("exclusiveMinimum") is False:
            out.pop("exclusiveMinimum")
        return out
    if isinstance(node, list):
        return [resolve(item, spec) for item in node]
    return node


def main():
    spec = yaml.safe_load(open(sys.argv[1]))
    faults = 0
    count = 0
    for line in open(sys.argv[2]):
        if not line.strip():
            continue
        answer = json.loads(line)
        count += 1
        path = answer["path"].split("?")[0]
        operation = None
        for template, item in spec["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and answer["method"].lower() in item:
                operation = item[answer["method"].lower()]
                break
        if operation is None:
            print(f"FAULT {answer['method']} {path}: not in the document")
            faults += 1
            continue
        response = operation["responses"].get(str(answer["status"]))
        if response is None:
            print(f"FAULT {answer['method']} {path}: status {answer['status']} is not documented")
            faults += 1
            continue
        response = resolve(response, spec)
        content_type = answer.get("contentType", "").split(";")[0].strip()
        media = response.get("content", {}).get(content_type)
        if media is None:
            print(f"FAULT {answer['method']} {path} {answer['status']}: content type {content_type!r} is not documented")
            faults += 1
            continue
        if content_type == "application/json":
            try:
                jsonschema.validate(json.loads(answer["body"]), media["schema"])
            except Exception as error:  # noqa: BLE001 - any failure is a fault to report
                print(f"FAULT {answer['method']} {path} {answer['status']}: {str(error).splitlines()[0]}")
                faults += 1
    print(f"{count} answers checked, {faults} faults")
    sys.exit(1 if faults or count == 0 else 0)


main()
