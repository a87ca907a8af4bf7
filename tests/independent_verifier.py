"""An audit trail verifier written from docs/audit.md alone, as an auditor would write it.

It imports nothing from the product (only the standard library: json for reading the export
lines, hashlib, dataclasses, typing), and serializes canonically by hand, following the
document rule by rule, rather than by calling json.dumps: the tests then prove the document is
enough.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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
    heads: dict[str, str] = field(default_factory=dict)
    checkpoints: int = 0


def _check_chain(name: str, lines: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The first problem of one chain's records, sorted by seq (docs/audit.md, steps 2-3)."""
    expected_prev, expected_seq = GENESIS, 1
    for line in lines:
        seq, body = line["seq"], line["body"]
        if seq != expected_seq:
            # A missing record has no position of its own: in the single chain it is its
            # number; in a lane chain, the record after the gap is named.
            at = expected_seq if line["position"] == seq else line["position"]
            return at, f"chain {name}: records from {expected_seq} missing"
        if line["prev_hash"] != expected_prev:
            return line["position"], f"chain {name}: does not link to the previous record"
        if canonical(json.loads(body)) != body:
            return line["position"], f"chain {name}: content is not canonical"
        if record_hash(seq, line["prev_hash"], body) != line["hash"]:
            return line["position"], f"chain {name}: content does not match its hash"
        expected_prev, expected_seq = line["hash"], seq + 1
    return None


def verify_jsonl(text: str) -> Verdict:
    """Verify a whole-trail export in the JSON Lines format (`responder audit export --format
    jsonl`): a header line, checkpoint lines, record lines (in any order; grouped by `chain`),
    an end line counting them. Each record's body must be the canonical text of the object it
    holds and is hashed as it is; every chain runs from record 1 (genesis) without a gap; every
    head a checkpoint names must be in the export with the same hash (docs/audit.md, step 4)."""
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not items or items[0].get("type") != "export" or items[-1].get("type") != "end":
        return Verdict(0, None, None, "not a complete export (header or end line missing)")
    records = [i for i in items if i.get("type") == "record"]
    checkpoints = [i for i in items if i.get("type") == "checkpoint"]
    if items[-1]["records"] != len(records) or items[-1]["checkpoints"] != len(checkpoints):
        return Verdict(len(records), None, None, "the end line counts other lines")
    chains: dict[str, list[dict[str, Any]]] = {}
    for line in records:
        chains.setdefault(line["chain"], []).append(line)
    problems: list[tuple[int, str]] = []
    heads: dict[str, str] = {}
    for name, lines in chains.items():
        lines.sort(key=lambda line: line["seq"])
        problem = _check_chain(name, lines)
        if problem:
            problems.append(problem)
        heads[name] = lines[-1]["hash"]
    for point in checkpoints:
        for name, head in point["heads"].items():
            by_seq = {line["seq"]: line for line in chains.get(name, [])}
            found = by_seq.get(head["seq"])
            if found is None:
                problems.append(
                    (
                        head["position"],
                        f"chain {name}: record {head['seq']} of the checkpoint "
                        f"of {point['at']} is missing",
                    )
                )
            elif found["hash"] != head["hash"]:
                problems.append(
                    (
                        found["position"],
                        f"chain {name}: record {head['seq']} differs from the "
                        f"checkpoint of {point['at']}",
                    )
                )
    newest = max(records, key=lambda line: line["position"], default=None)
    first = min(problems) if problems else None
    return Verdict(
        records=len(records),
        head_hash=newest["hash"] if newest and not first else None,
        first_broken=first[0] if first else None,
        problem=first[1] if first else None,
        heads=heads,
        checkpoints=len(checkpoints),
    )
