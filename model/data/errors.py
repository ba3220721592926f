"""Errors and read statistics shared by the data readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataFormatError(ValueError):
    """A line of an input file does not match its format.

    The message names the file and line: ``train.txt:17: expected 'user,item,position', got 'abc'``.
    """

    def __init__(self, path: Path | str, line_no: int, reason: str) -> None:
        self.path = Path(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(f"{self.path.name}:{line_no}: {reason}")


@dataclass
class ReadReport:
    """What a reader did with a file.

    ``lines_read`` counts every non-blank line examined (blank lines are ignored),
    ``lines_skipped`` the bad ones among them that were skipped, ``reasons`` the first few errors.
    """

    path: Path
    lines_read: int = 0
    lines_skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    max_reasons: int = 5

    def skip(self, error: DataFormatError) -> None:
        """Count a bad line that the caller chose to skip, keeping its reason if there is room."""
        self.lines_skipped += 1
        if len(self.reasons) < self.max_reasons:
            self.reasons.append(str(error))

    @property
    def lines_used(self) -> int:
        return self.lines_read - self.lines_skipped

    @property
    def ok(self) -> bool:
        return self.lines_skipped == 0
