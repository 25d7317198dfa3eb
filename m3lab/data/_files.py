"""Reading text files with errors that say where: missing files, bad bytes, bad JSON lines."""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from .records import DataError


def existing_file(path: str | Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found" if not path.exists() else f"{what} is not a regular file", path=path)
    return path


def _decode(data: bytes, path: Path, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = line if line is not None else data[:e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}"
                        + (" of the line)" if line is not None else ")"), path=path, line=where) from None


def read_text(path: str | Path) -> str:
    """The whole file as text (UTF-8, an optional BOM removed, ``\\r\\n`` normalised to ``\\n``)."""
    path = existing_file(path)
    text = _decode(path.read_bytes(), path)
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def read_lines(path: str | Path) -> list[str]:
    """Lines split on ``\\n`` only: ``str.splitlines`` also splits on U+2028 & co and would break line alignment."""
    text = read_text(path)
    return text.removesuffix("\n").split("\n") if text else []


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Stream ``(line_number, object)`` from a JSON-lines file; blank lines are skipped."""
    path = existing_file(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = _decode(raw, path, number)
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=number) from None
