"""Reading JSON-lines data files strictly: every problem is a DataError naming the file and line
(missing or unreadable file, not UTF-8, not JSON, not an object, a missing or ill-typed field,
a duplicate id), raised before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path


class DataError(ValueError):
    """A dataset is unknown, missing or malformed; the message names the file and line."""


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Every non-blank line of `path` as a dict that has the `required` fields."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file (a JSON-lines data file is expected)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start}); convert the file "
                        "to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append({**row, "_line": lineno})
    if not rows:
        raise DataError(f"{path} holds no records (empty file)")
    return rows


def text_field(path: Path, row: dict, key: str) -> str:
    """A required non-empty string field."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "null" if value is None else repr(value)[:40] if isinstance(value, str) else type(value).__name__
        raise DataError(f"{path}:{row['_line']}: field {key!r} must be a non-empty string, got {got}")
    return value


def reference_field(path: Path, row: dict, key: str = "reference") -> str | list[str] | None:
    """An optional reference: a string, a non-empty list of strings (scored against the best), or absent/null."""
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise DataError(f"{path}:{row['_line']}: field {key!r} must be a string, a list of strings or null, "
                    f"got {type(value).__name__}")


def turns_field(path: Path, row: dict, key: str = "turns") -> list[str]:
    """A non-empty list of non-empty strings (the user turns of a conversation)."""
    value = row.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t.strip() for t in value):
        raise DataError(f"{path}:{row['_line']}: field {key!r} must be a non-empty list of non-empty strings")
    return value


def unique_ids(path: Path, rows: list[dict], ids: list[str]) -> None:
    """Refuse a file whose ids repeat (a repeated id would silently drop records)."""
    seen: dict[str, int] = {}
    for row, sid in zip(rows, ids):
        if sid in seen:
            raise DataError(f"{path}:{row['_line']}: duplicate id {sid!r} (first on line {seen[sid]}); "
                            "ids must be unique")
        seen[sid] = row["_line"]
