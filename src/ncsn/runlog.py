"""A run's ``log.csv``: rows appended one whole line at a time, repaired on resume.

Appending cannot be atomic the way replacing a file is, so the log is made safe the other way
round: each row is written as one line and flushed, and :func:`repair` (run before a resumed run
appends again) keeps only complete rows up to the resumed step, dropping a last line cut short by
a crash or a full disk, and rewrites the file atomically. Readers (:func:`read_rows`) skip rows
that do not parse.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ncsn.atomic import cannot_write, write_text

#: the columns of a training log
FIELDS = ["step", "loss", "lr", "steps_per_s", "elapsed_s"]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _complete_rows(text: str, fields: list[str]) -> list[list[str]]:
    """The rows of a log's ``text`` (header excluded) that are whole: every field present, the line ended."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # cut short mid-row
    rows = []
    for row in csv.reader(lines[1:]):
        if len(row) == len(fields) and row[0].isdigit():
            rows.append(row)
    return rows


def _as_csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def repair(path: str | Path, step: int, fields: list[str]) -> int:
    """Keep the header and the complete rows of steps <= ``step``; return how many lines were dropped.

    A missing file is created with the header alone. The file is rewritten (atomically) only when
    something changes.
    """
    path = Path(path)
    if not path.exists():
        write_text(path, _as_csv([fields]))
        return 0
    text = _read(path)
    kept = _as_csv([fields] + [row for row in _complete_rows(text, fields) if int(row[0]) <= step])
    if kept == text:
        return 0
    write_text(path, kept)
    return len(text.splitlines()) - len(kept.splitlines())


def read_rows(path: str | Path, fields: list[str]) -> list[dict[str, str]]:
    """The complete rows of a log as dicts (rows cut short or unparsable are skipped)."""
    path = Path(path)
    return [dict(zip(fields, row)) for row in _complete_rows(_read(path), fields)] if path.exists() else []


class Appender:
    """Append rows to a log, each as one flushed line; a failed write is a one-line :class:`OutputError`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.handle = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as err:
            raise cannot_write(self.path, err) from None

    def write(self, row: list) -> None:
        """Append ``row`` as one CSV line and flush it (a full disk is a one-line :class:`OutputError`)."""
        try:
            self.handle.write(_as_csv([row]))
            self.handle.flush()
        except OSError as err:
            raise cannot_write(self.path, err) from None

    def close(self) -> None:
        """Close the log file (an error while closing is ignored: every row was flushed when written)."""
        try:
            self.handle.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
