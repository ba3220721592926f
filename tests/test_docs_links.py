"""README.md and docs/*.md: every relative link resolves, anchors included; no internal issue numbers.

A link is ``[text](target)``, ``![alt](target)``, a reference definition ``[name]: target`` or an
HTML ``href``/``src``; those inside code (fenced blocks, inline backticks) are not links. A target
with a scheme (``https:``, ``mailto:``) is left alone. ``path#anchor`` must name a file that exists
and, for Markdown, a heading of it under GitHub's anchor rules (lower case, punctuation dropped,
spaces to hyphens, ``-1``, ``-2`` for repeats) or an explicit ``<a id="...">``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ISSUE = re.compile(r"\bissues?\s*#?\d+|\(#\d+\)|\bPR\s*#?\d+", re.IGNORECASE)


def _prose(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return [m.group(1) for pattern in (INLINE, REFERENCE, HTML) for m in pattern.finditer(prose)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", text).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    found.update(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", text))
    return found


def broken(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    out = []
    for target in links(text):
        if SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not resolved.exists():
            out.append(f"{target}: no such file {resolved}")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text(encoding="utf-8")):
            out.append(f"{target}: no heading #{fragment} in {resolved.name}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_issue_numbers(page: Path) -> None:
    hits = [m.group(0) for m in ISSUE.finditer(page.read_text(encoding="utf-8"))]
    assert hits == [], f"{page.name} names internal issues: {hits}"


def test_the_checker_finds_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Two words, here!\n\n## Two words, here!\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [anchor](docs/a.md#two-words-here) [again](docs/a.md#two-words-here-1)\n"
        "[web](https://example.com/x) ![img](docs/missing.png) [gone](docs/a.md#nowhere)\n"
        '`[code](not/a/link.md)`\n```\n[fenced](nor/this.md)\n```\n[self](#local) <img src="docs/a.md">\n'
        "[ref]: docs/none.md\n"
    )
    assert [b.split(":")[0] for b in broken(page)] == [
        "docs/missing.png",
        "docs/a.md#nowhere",
        "#local",
        "docs/none.md",
    ]
    assert slug("Embedded broker: what it can and cannot do") == "embedded-broker-what-it-can-and-cannot-do"
    assert ISSUE.search("what was tried (issue 16)") and not ISSUE.search("an issue with 16 items? no")
