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
    lines in any order. Stored bodies are never oversized (the responder stores the slim
    entry), so each line's entry is hashed as it is."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    lines.sort(key=lambda line: line["seq"])
    expected_prev, expected_seq = GENESIS, 1
    for line in lines:
        seq = line["seq"]
        if seq != expected_seq:
            return Verdict(len(lines), None, expected_seq, f"records from {expected_seq} missing")
        if line["prev_hash"] != expected_prev:
            return Verdict(len(lines), None, seq, "does not link to the previous record")
        if record_hash(seq, line["prev_hash"], canonical(line["entry"])) != line["hash"]:
            return Verdict(len(lines), None, seq, "content does not match its hash")
        expected_prev, expected_seq = line["hash"], seq + 1
    return Verdict(len(lines), expected_prev if lines else None, None, None)
