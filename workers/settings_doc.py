"""docs/configuration.md's settings tables, generated from :class:`workers.settings.Settings`.

    python -m workers.settings_doc [--check]

Every ``MINDSTREAM_*`` variable with its type, default and the field's description, one table per
section, written between ``<!-- settings:start -->`` and ``<!-- settings:end -->``; nothing else in
the page changes. ``--check`` writes nothing and exits 1 when the page is out of date
(tests/workers/test_settings_doc.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"
START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
PREFIX = "MINDSTREAM_"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " / ".join(names) + (" or unset" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return {"StrictBool": "bool", "StrictInt": "int", "StrictFloat": "float"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        try:  # a path inside the checkout is shown relative to it, never as this machine's path
            return f"`{value.resolve().relative_to(ROOT).as_posix()}`"
        except ValueError:
            return f"`{value.as_posix()}`" if not value.is_absolute() else "(a path)"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int):
        return f"`{value}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, dict | list):
        return "`" + (", ".join(map(str, value)) if isinstance(value, list) else str(value) or "{}") + "`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _model_of(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _sections(model: type[BaseModel], env: str, title: str) -> list[tuple[str, str, list[tuple[str, ...]]]]:
    """``[(title, docstring, rows)]``: this model's plain fields, then each nested section after it."""
    rows: list[tuple[str, ...]] = []
    nested: list[tuple[str, str, list[tuple[str, ...]]]] = []
    for name, field in model.model_fields.items():
        var = f"{env}{name.upper()}"
        sub = _model_of(field)
        if sub is not None:
            heading = f"{title}.{name}" if title else name
            nested += _sections(sub, f"{var}__", heading)
            continue
        rows.append((f"`{var}`", _type_name(field.annotation), _default(field), _cell(field.description or "")))
    doc = " ".join((model.__doc__ or "").split()) if model is not Settings else ""
    return [(title, doc, rows), *nested]


def render() -> str:
    """The Markdown between the markers."""
    out: list[str] = []
    for title, doc, rows in _sections(Settings, PREFIX, ""):
        if not rows:
            continue
        out += ["", f"### {f'`{title}`' if title else 'Top level'}", ""]
        if doc and not doc.startswith(("Root settings", "The one settings")):
            out += [doc, ""]
        out += ["| variable | type | default | what it does |", "|---|---|---|---|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out).lstrip("\n") + "\n"


def render_page(text: str) -> str:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} / {END} markers")
    return text[: start + len(START)] + "\n" + render() + text[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--page", type=Path, default=PAGE)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is out of date")
    args = p.parse_args(argv)
    text = args.page.read_text()
    new = render_page(text)
    if args.check:
        if new != text:
            sys.stdout.write(f"out of date: {args.page} (run python -m workers.settings_doc)\n")
            return 1
        return 0
    if new != text:
        args.page.write_text(new)
        sys.stdout.write(f"rendered {args.page}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
