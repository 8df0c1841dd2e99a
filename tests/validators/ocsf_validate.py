"""Validates OCSF events (one JSON object a line on stdin) against the OCSF
schema: the schema export shipped in PyPI's `ocsf-json-schema` (offline,
nothing fetched), turned into a JSON Schema for each event's class and
declared profiles by that package, checked by `jsonschema` (draft 2020-12).

usage: ocsf_validate.py OCSF_VERSION < events.jsonl

Prints one line per event (class, profiles, OK or the errors); exits 1 if
any event fails.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def main():
    version = sys.argv[1]
    ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    failed = 0
    for n, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        event = json.loads(line)
        if event.get("metadata", {}).get("version") != version:
            print(f"{n}: metadata.version is not {version}")
            failed += 1
            continue
        class_name = ocsf.lookup_class_name_from_uid(class_uid=event["class_uid"])
        profiles = event.get("metadata", {}).get("profiles", [])
        schema = ocsf.get_class_schema(class_name=class_name, profiles=profiles)
        errors = sorted(
            Draft202012Validator(schema).iter_errors(event), key=lambda e: list(e.path)
        )
        kind = event.get("unmapped", {}).get("agentguard", {}).get("kind", "?")
        if errors:
            failed += 1
            print(f"{n}: {kind} as {class_name} {profiles}: INVALID")
            for e in errors:
                where = "/".join(str(p) for p in e.absolute_path) or "(event)"
                print(f"    {where}: {e.message[:300]}")
        else:
            print(f"{n}: {kind} as {class_name} {profiles}: OK")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
