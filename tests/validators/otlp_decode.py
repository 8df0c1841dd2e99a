"""Decodes an OTLP/HTTP logs export body with the OpenTelemetry project's
own Python message classes (PyPI `opentelemetry-proto`) and prints it as
JSON, so a test can check what a collector would read.

usage: otlp_decode.py CONTENT_TYPE CONTENT_ENCODING BODY_FILE

Fails (exit 1, reason on stderr) when the body is not a valid
ExportLogsServiceRequest: undecodable protobuf, fields the schema does not
have (unknown protobuf fields, unknown JSON keys), or trailing bytes.
"""

import base64
import gzip
import json
import sys

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
)


def fail(why):
    print(f"otlp_decode: {why}", file=sys.stderr)
    sys.exit(1)


def no_unknown_fields(msg, path="request"):
    if len(UnknownFieldSet(msg)) > 0:
        fail(f"{path} has fields the OTLP schema does not define")
    for field, value in msg.ListFields():
        if isinstance(value, Message):
            no_unknown_fields(value, f"{path}.{field.name}")
        elif not isinstance(value, (str, bytes, int, float, bool)):
            for i, item in enumerate(value):
                if isinstance(item, Message):
                    no_unknown_fields(item, f"{path}.{field.name}[{i}]")


def hex_ids_to_base64(obj):
    """OTLP/JSON writes trace and span ids as hex, where the protobuf JSON
    mapping expects base64 (the one place the two differ)."""
    for rl in obj.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for rec in sl.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in rec:
                        rec[key] = base64.b64encode(bytes.fromhex(rec[key])).decode()
    return obj


def main():
    content_type, encoding, path = sys.argv[1:4]
    with open(path, "rb") as f:
        body = f.read()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding not in ("", "identity"):
        fail(f"unknown content-encoding {encoding!r}")
    msg = ExportLogsServiceRequest()
    if content_type == "application/x-protobuf":
        consumed = msg.ParseFromString(body)
        if consumed != len(body):
            fail(f"{len(body) - consumed} trailing bytes")
        no_unknown_fields(msg)
    elif content_type == "application/json":
        # Unknown keys are an error here (ignore_unknown_fields=False).
        json_format.Parse(json.dumps(hex_ids_to_base64(json.loads(body))), msg)
    else:
        fail(f"unexpected content-type {content_type!r}")
    out = json_format.MessageToDict(msg)
    # Ids back to hex, as OTLP shows them.
    for rl in out.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for rec in sl.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in rec:
                        rec[key] = base64.b64decode(rec[key]).hex()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
