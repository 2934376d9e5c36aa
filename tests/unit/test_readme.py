"""README.md and docs/: a quick start first, a table of contents whose links work, relative
links that resolve, every `conveyor serve` flag documented, and the internals kept in docs/."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from runtime.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The README holds the user's path and the reference; how things work inside is in docs/.
# The bound is what that took, plus room for a few more rows: past it, move text to docs/.
MAX_README_BYTES = 68_000
# Pages the README's internals moved to.
INTERNALS = ("batching.md", "drift.md", "kernels.md")
QUICK_START = "Quick start"
CONTENTS = "Contents"
FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#* *$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")


def prose(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every ATX heading outside code blocks, in order."""
    found = (HEADING.match(line) for line in prose(text))
    return [(len(m[1]), m[2]) for m in found if m]


def slug(title: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped,
    each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for _, title in headings(text):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def sections(text: str) -> dict[str, str]:
    """Each level-2 section's text (its subsections included), by title."""
    parts = re.split(r"^## +(.+?) *$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def links(text: str) -> list[str]:
    """Targets of the inline links outside code blocks and code spans."""
    return [t for line in prose(text) for t in LINK.findall(CODE_SPAN.sub("", line))]


def serve_flags() -> set[str]:
    """Every long option `conveyor serve --help` prints."""
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = sub.choices["serve"].format_help()
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text)) - {"--help"}


def resolves(page: Path, target: str) -> bool:
    """Whether a link from page reaches a file, and a heading of it where it names one."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: are not checked
        return True
    path, _, fragment = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return False
    return not fragment or file.suffix != ".md" or fragment in anchors(file.read_text())


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_the_first_section_is_a_quick_start_with_tritonclient_and_curl(readme: str) -> None:
    titles = [title for level, title in headings(readme) if level == 2]
    assert titles[0] == QUICK_START, f"the first section is {titles[0]!r}"
    quick = sections(readme)[QUICK_START]
    for call in ("make serve", "import tritonclient.http", "import tritonclient.grpc", "curl "):
        assert call in quick, f"the quick start has no {call!r}"
    assert ".infer(" in quick
    assert "conveyor publish" in quick, "the quick start does not say how to serve your own model"


def test_the_contents_list_every_section_in_order(readme: str) -> None:
    assert CONTENTS in sections(readme), f"no '## {CONTENTS}' section"
    listed = LINK.findall(sections(readme)[CONTENTS])
    titles = [title for level, title in headings(readme) if level == 2 and title != CONTENTS]
    top = [target for target in listed if target.lstrip("#") in {slug(t) for t in titles}]
    assert top == [f"#{slug(t)}" for t in titles], "the contents miss or misorder a section"
    # Entries into the README itself must reach a heading; links elsewhere are checked below.
    missing = [t for t in listed if t.startswith("#") and t[1:] not in anchors(readme)]
    assert not missing, f"contents entries with no heading: {missing}"


@pytest.mark.parametrize(
    "page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_resolve(page: Path) -> None:
    broken = [target for target in links(page.read_text()) if not resolves(page, target)]
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_the_readme_is_bounded_and_links_the_internals_in_docs(readme: str) -> None:
    size = len(readme.encode())
    assert size < MAX_README_BYTES, f"README.md is {size} bytes; move internals to docs/"
    pages = {p.name for p in DOCS.glob("*.md")}
    assert set(INTERNALS) <= pages, f"docs/ lacks {set(INTERNALS) - pages}"
    linked = {Path(t.partition("#")[0]).name for t in links(readme) if t.startswith("docs/")}
    assert pages <= linked, f"docs pages the README never links: {pages - linked}"


def test_every_serve_flag_is_in_the_readme(readme: str) -> None:
    flags = serve_flags()
    assert "--http-body-timeout-secs" in flags  # the parse found the help's options
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", readme))
    assert not flags - documented, f"flags the README never names: {sorted(flags - documented)}"
