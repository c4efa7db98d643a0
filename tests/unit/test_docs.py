"""The documents hold together: links and anchors resolve, the indexes are complete, the README stays short.

Anchors follow GitHub's rules for heading ids, so a link that works here works on GitHub: the heading's text
in lowercase, every character that is not a letter, digit, underscore, hyphen or space dropped, spaces turned
into hyphens, and ``-1``, ``-2`` ... appended to repeated headings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
DOCS: Final = ROOT / "docs"
INDEX: Final = DOCS / "README.md"
DOCUMENTS: Final = [README, *sorted(DOCS.glob("*.md"))]
README_LINE_BUDGET: Final = 300

_FENCE: Final = re.compile(r"^```")
_SHELL_FENCE: Final = re.compile(r"^```(?:sh|bash|shell|console)?\s*$")
_HEADING: Final = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN: Final = re.compile(r"(`+).*?\1")
_LINK: Final = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_LINK_TEXT: Final = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_MAKE_RULE: Final = re.compile(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", re.MULTILINE)


def prose(text: str) -> str:
    """The text outside code blocks, inline code removed; code blocks become empty lines, so numbers hold."""
    lines = []
    in_block = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_block = not in_block
            lines.append("")
        else:
            lines.append("" if in_block else _CODE_SPAN.sub("", line))
    return "\n".join(lines)


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) inside shell code blocks (```sh, ```bash, ```shell, ```console or a bare fence)."""
    lines = []
    in_block = inside_shell = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_block = not in_block
            inside_shell = in_block and bool(_SHELL_FENCE.match(line))
            continue
        if inside_shell:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's id for a heading's text (before duplicates are numbered)."""
    text = _LINK_TEXT.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def all_headings(text: str) -> Iterator[tuple[int, str]]:
    """(level, text) of each heading, in order; a ``#`` line inside a code block is not one."""
    in_block = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_block = not in_block
            continue
        heading = _HEADING.match(line)
        if not in_block and heading is not None:
            yield len(heading.group(1)), heading.group(2)


def anchors(text: str) -> set[str]:
    """Every heading id of a document, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, heading in all_headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def headings(text: str, levels: range) -> list[str]:
    """The text of each heading whose level is in ``levels``, outside code blocks."""
    return [heading for level, heading in all_headings(text) if level in levels]


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of each link that points into this repository; link text may span lines."""
    outside_code = prose(text)
    return [
        (outside_code.count("\n", 0, link.start()) + 1, link.group(1))
        for link in _LINK.finditer(outside_code)
        if not _SCHEME.match(link.group(1))
    ]


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    """Each link of ``document`` whose file or heading does not exist, as ``path:line: target``."""
    broken = []
    for number, target in relative_links(document.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        if not destination.exists():
            broken.append(f"{document.relative_to(root)}:{number}: {target} (no such file)")
        elif anchor and (
            destination.suffix != ".md" or anchor not in anchors(destination.read_text("utf-8"))
        ):
            broken.append(f"{document.relative_to(root)}:{number}: {target} (no such heading)")
    return broken


def linked_files(document: Path) -> set[Path]:
    """The files ``document`` links to, resolved."""
    return {
        (document.parent / target.partition("#")[0]).resolve()
        for _, target in relative_links(document.read_text(encoding="utf-8"))
        if target.partition("#")[0]
    }


def makefile_targets() -> set[str]:
    return set(_MAKE_RULE.findall((ROOT / "Makefile").read_text(encoding="utf-8")))


def documented_make_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of each ``make TARGET`` in a shell block; ``VAR=value`` and options skipped."""
    found = []
    for number, line in shell_lines(text):
        for match in re.finditer(r"(?<![\w./-])make((?:\s+[^\s#;&|]+)+)", line.split(" #", 1)[0]):
            words = [word.rstrip(",.") for word in match.group(1).split()]
            target = next((word for word in words if "=" not in word and not word.startswith("-")), None)
            if target is not None:
                found.append((number, target))
    return found


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("How one record flows", "how-one-record-flows"),
        ("Choosing `RESEND_RATE_PER_MINUTE`", "choosing-resend_rate_per_minute"),
        ("IN_PROGRESS (a live or a stale claim)", "in_progress-a-live-or-a-stale-claim"),
        (
            "Poison, and other messages in the dead-letter queue",
            "poison-and-other-messages-in-the-dead-letter-queue",
        ),
        ("Powertools: bundled, not a layer", "powertools-bundled-not-a-layer"),
        ("[Runbook](runbook.md)", "runbook"),
    ],
)
def test_slugs_follow_githubs_rules(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_repeated_headings_are_numbered_and_code_blocks_hold_no_headings() -> None:
    text = "# Title\n## Setup\n```sh\n# a comment, not a heading\n```\n## Setup\n### Setup\n"

    assert anchors(text) == {"title", "setup", "setup-1", "setup-2"}


def test_the_link_checker_reports_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n## Present\n", encoding="utf-8")
    document = tmp_path / "doc.md"
    document.write_text(
        "# Doc\n"
        "[ok](other.md#present) [ok](#doc) [web](https://example.com/missing.md) `[code](gone.md)`\n"
        "[gone](gone.md) [no\nheading](other.md#absent)\n"
        "```sh\n[in a block](gone.md)\n```\n",
        encoding="utf-8",
    )

    assert broken_links(document, root=tmp_path) == [
        "doc.md:3: gone.md (no such file)",
        "doc.md:3: other.md#absent (no such heading)",  # a link's line is where its text begins
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_every_relative_link_points_at_an_existing_file_and_heading(document: Path) -> None:
    assert relative_links(document.read_text(encoding="utf-8"))
    assert broken_links(document) == []


def test_the_index_links_every_document() -> None:
    documents = {path.resolve() for path in DOCS.glob("*.md")} - {INDEX.resolve()}

    assert documents
    assert documents - linked_files(INDEX) == set()


def test_the_index_lists_every_section_of_every_document() -> None:
    index_targets = {target for _, target in relative_links(INDEX.read_text(encoding="utf-8"))}
    missing = [
        f"{document.name}#{slug(heading)}"
        for document in sorted(DOCS.glob("*.md"))
        if document != INDEX
        for heading in headings(document.read_text(encoding="utf-8"), range(2, 4))
        if f"{document.name}#{slug(heading)}" not in index_targets
    ]

    assert missing == []


def test_the_readme_is_short_and_links_every_document() -> None:
    text = README.read_text(encoding="utf-8")
    documents = {path.resolve() for path in DOCS.glob("*.md")}

    assert len(text.splitlines()) <= README_LINE_BUDGET
    assert documents - linked_files(README) == set()


def test_the_make_target_reader_skips_variables_and_comments() -> None:
    text = "```sh\nmake bench BENCH_ARGS=--storm   # the storm\nFOO=1 make -s test\necho remake it\n```\n"

    assert documented_make_targets(text) == [(2, "bench"), (3, "test")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_every_documented_make_target_is_in_the_makefile(document: Path) -> None:
    targets = makefile_targets()
    unknown = [
        f"{number}: make {target}"
        for number, target in documented_make_targets(document.read_text(encoding="utf-8"))
        if target not in targets
    ]

    assert {"test", "demo", "build"} <= targets
    assert unknown == []
