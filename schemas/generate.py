"""``python -m schemas.generate``: write the JSON Schema of every wire model to ``schemas/json/``.

``--check`` writes nothing and exits 1 when the checked-in files differ from the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from pydantic import BaseModel

from schemas.messages import ClickEvent, ErrorReply, ItemEvent, RecallReply, RecallRequest

JSON_DIR: Final = Path(__file__).resolve().parent / "json"
MODELS: Final[tuple[type[BaseModel], ...]] = (ClickEvent, RecallRequest, RecallReply, ErrorReply, ItemEvent)


def render_all() -> dict[str, str]:
    """File name -> file text, for every wire model."""
    return {
        f"{model.__name__}.json": json.dumps(model.model_json_schema(), sort_keys=True, indent=2) + "\n"
        for model in MODELS
    }


def stale_files(directory: Path = JSON_DIR) -> list[str]:
    """Names of schema files that are missing, different, or no longer generated."""
    wanted = render_all()
    present = {p.name for p in directory.glob("*.json")}
    differ = [n for n, text in wanted.items() if n not in present or (directory / n).read_text() != text]
    return sorted([*differ, *(present - wanted.keys())])


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in directory.glob("*.json")) - render_all().keys():
        (directory / stale).unlink()
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {JSON_DIR / name}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_all():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
