"""An audit trail verifier written from docs/audit.md alone, as an auditor would write it.

It imports nothing from the product (only the standard library's json, for reading the export
lines, and hashlib), and serializes canonically by hand, following the document rule by rule,
rather than by calling json.dumps: the tests then prove the document is enough.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

GENESIS = "0" * 64
MAX_BODY_CHARS = 30_000
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
SHORT_ESCAPES["\t"] = "\\t"


def canonical_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def canonical(value: object) -> str:
    """The canonical text of a JSON value (docs/audit.md, "Canonical serialization")."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return canonical_string(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(item) for item in value) + "]"
    if isinstance(value, dict):
        # Keys by Unicode code point; Python compares str by code point.
        members = [f"{canonical_string(k)}:{canonical(value[k])}" for k in sorted(value)]
        return "{" + ",".join(members) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def body_of(entry: dict[str, object]) -> str:
    """The record body: the canonical entry, with an oversized result replaced by its digest."""
    body = canonical(entry)
    if len(body) <= MAX_BODY_CHARS:
        return body
    result = canonical(entry["result"])
    digest = hashlib.sha256(result.encode("utf-8")).hexdigest()
    slim = {**entry, "result": {"truncated": True, "chars": len(result), "sha256": digest}}
    return canonical(slim)


def record_hash(seq: int, prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{seq}\n{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    records: int
    head_hash: str | None
    first_broken: int | None
    problem: str | None


def verify_jsonl(text: str) -> Verdict:
    """Verify an export in the JSON Lines format (`responder audit export --format jsonl`),
    record lines in any order. Each record's body must be the canonical text of the object it
    holds, and the hash is computed over it as it is; every checkpoint must name a record
    with its hash; the end line must be there and count what the file holds."""
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not items or items[0].get("type") != "export" or items[-1].get("type") != "end":
        return Verdict(0, None, None, "not a complete export (header or end line missing)")
    records = sorted((i for i in items if i["type"] == "record"), key=lambda i: i["seq"])
    checkpoints = [i for i in items if i["type"] == "checkpoint"]
    if items[-1]["records"] != len(records) or items[-1]["checkpoints"] != len(checkpoints):
        return Verdict(len(records), None, None, "the end line counts other lines")
    by_seq = {}
    expected_prev, expected_seq = GENESIS, 1
    for line in records:
        seq, body = line["seq"], line["body"]
        if seq != expected_seq:
            return Verdict(len(records), None, expected_seq, f"records from {expected_seq} missing")
        if line["prev_hash"] != expected_prev:
            return Verdict(len(records), None, seq, "does not link to the previous record")
        if canonical(json.loads(body)) != body:
            return Verdict(len(records), None, seq, "content is not canonical")
        if record_hash(seq, line["prev_hash"], body) != line["hash"]:
            return Verdict(len(records), None, seq, "content does not match its hash")
        by_seq[seq] = line["hash"]
        expected_prev, expected_seq = line["hash"], seq + 1
    for checkpoint in sorted(checkpoints, key=lambda c: c["seq"]):
        if by_seq.get(checkpoint["seq"]) != checkpoint["hash"]:
            return Verdict(len(records), None, checkpoint["seq"], "differs from a checkpoint")
    return Verdict(len(records), expected_prev if records else None, None, None)
