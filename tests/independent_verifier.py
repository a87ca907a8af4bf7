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


def _where(line: dict[str, Any]) -> int:
    """How a record is named in a verdict: its position in the trail where the export gives
    one (several chains), else its sequence number."""
    return int(line.get("position", line["seq"]))


def _check_chain(name: str, lines: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The first problem of one chain's records, sorted by seq (docs/audit.md, steps 2-3)."""
    expected_prev, expected_seq = GENESIS, 1
    for line in lines:
        seq = line["seq"]
        if seq != expected_seq:
            at = expected_seq if "position" not in line else _where(line)
            return at, f"chain {name}: records from {expected_seq} missing"
        if line["prev_hash"] != expected_prev:
            return _where(line), f"chain {name}: does not link to the previous record"
        if record_hash(seq, line["prev_hash"], canonical(line["entry"])) != line["hash"]:
            return _where(line), f"chain {name}: content does not match its hash"
        expected_prev, expected_seq = line["hash"], seq + 1
    return None


def verify_jsonl(text: str) -> Verdict:
    """Verify an export in the JSON Lines format (`responder audit export --format jsonl`),
    lines in any order: record lines, grouped by `chain` (`chain` when absent), and
    checkpoint lines `{"checkpoint": {...}}`, each of whose chain heads must be in the export
    with the same hash (step 4). Stored bodies are never oversized (the responder stores the
    slim entry), so each line's entry is hashed as it is."""
    parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
    checkpoints = [line["checkpoint"] for line in parsed if "checkpoint" in line]
    records = [line for line in parsed if "checkpoint" not in line]
    chains: dict[str, list[dict[str, Any]]] = {}
    for line in records:
        chains.setdefault(line.get("chain", "chain"), []).append(line)
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
                        _where(found),
                        f"chain {name}: record {head['seq']} differs from the "
                        f"checkpoint of {point['at']}",
                    )
                )
    newest = max(records, key=_where, default=None)
    first = min(problems) if problems else None
    return Verdict(
        records=len(records),
        head_hash=newest["hash"] if newest and not first else None,
        first_broken=first[0] if first else None,
        problem=first[1] if first else None,
        heads=heads,
        checkpoints=len(checkpoints),
    )
