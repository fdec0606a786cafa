"""The run's declared outputs as artifacts of its flow run, written when the run ends.

Each file an `outputs:` entry matches becomes one artifact, keyed by the orchestration and the
file's path (so a deployment's runs version it) and described by the entry's title:

- Markdown (`.md`, `.markdown`) as a Markdown artifact, rendered by the UI;
- CSV as a table artifact: its first `TABLE_ROWS` rows, the rest counted (the UI renders each
  cell as Markdown, so cells are made inert as Markdown files are);
- any other text as a fenced block of Markdown: its first `TEXT_BYTES`, the cut named;
- binary files in one Markdown artifact that lists them with their sizes.

What the agents wrote is theirs, not ours: in rendered Markdown, raw HTML is shown as text
and links lead only to web or mail addresses; names are shown as text everywhere.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from toka_agents import text
from toka_agents.config.limits import format_bytes
from toka_agents.sandbox.workspace_files import OutputFile, open_inside

TABLE_ROWS = 1_000
TEXT_BYTES = 200 * 1024
MARKDOWN_SUFFIXES = (".md", ".markdown")
_KEY_LIMIT = 120
TABLE_FILE_BYTES = 16 * 1024**2
"""A bigger CSV is shown as text: reading it whole would hold too much of it in memory."""
_MAX_COLUMNS = 200
"""A CSV with more columns is shown as text: no table that wide is read in a browser."""


def write_output_artifacts(plan_name: str, workspace: Path, files: list[OutputFile]) -> list[str]:
    """One artifact per file of `workspace` (binary files together in one); return a warning
    per file whose artifact could not be written. Never raises."""
    problems: list[str] = []
    binary: list[OutputFile] = []
    keys: set[str] = {_key(plan_name, "binary-outputs")}
    for file in files:
        key = _key(plan_name, file.relative)
        if key in keys:  # `a_b.md` and `a-b.md`: one key, unless told apart
            key = _key(plan_name, file.relative, hashlib.sha256(file.relative.encode()).hexdigest()[:8])
        keys.add(key)
        title = text.one_line(file.title, 300)
        try:
            # Only the head: a sparse file may be far bigger than the disk that holds it.
            with open(open_inside(workspace, file.relative), "rb") as handle:
                head = handle.read(TEXT_BYTES + 4)
            if b"\0" in head[:8192] or not _is_text(head):
                binary.append(file)
            elif file.relative.lower().endswith(MARKDOWN_SUFFIXES):
                markdown, cut = _cut(head, file.size)
                shown = safe_markdown(markdown) + cut
                create_markdown_artifact(markdown=shown, key=key, description=title)
            elif (
                file.relative.lower().endswith(".csv")
                and file.size <= TABLE_FILE_BYTES
                and (table := _table(workspace, file.relative)) is not None
            ):
                rows, total = table
                more = f"; first {len(rows):,} of {total:,} rows" if total > len(rows) else ""
                create_table_artifact(table=rows, key=key, description=f"{title}{more}")
            else:
                body, cut = _cut(head, file.size)
                create_markdown_artifact(
                    markdown=f"**{shown_literally(file.relative)}**\n\n{fenced(body)}{cut}",
                    key=key,
                    description=title,
                )
        except Exception as exc:  # an unreadable file, or the API failed us: the run stands
            problems.append(f"output {file.relative!r}: no artifact: {text.one_line(str(exc), 300)}")
    if binary:
        lines = ["| file | size |", "| --- | --- |"]
        lines += [f"| {shown_literally(file.relative)} | {format_bytes(file.size)} |" for file in binary]
        try:
            create_markdown_artifact(
                markdown="Binary outputs, in the workspace archive (`toka workspace get`):\n\n"
                + "\n".join(lines),
                key=_key(plan_name, "binary-outputs"),
                description="Binary outputs",
            )
        except Exception as exc:
            problems.append(f"binary outputs: no artifact: {text.one_line(str(exc), 300)}")
    return problems


def _key(*parts: str) -> str:
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(("output", *parts)).lower()).strip("-")
    return key[:_KEY_LIMIT].rstrip("-")


def _is_text(head: bytes) -> bool:
    try:
        head.decode()
    except UnicodeDecodeError as exc:
        return exc.start >= TEXT_BYTES  # a character cut by the limit, not a binary file
    return True


def _cut(head: bytes, size: int) -> tuple[str, str]:
    """The first `TEXT_BYTES` of a file whose head is `head`, and a note naming the cut (empty
    when whole)."""
    if size <= TEXT_BYTES and len(head) <= TEXT_BYTES:
        return head.decode(), ""
    kept = head[:TEXT_BYTES].decode(errors="ignore")
    return kept, f"\n\n*(cut: the first {format_bytes(TEXT_BYTES)} of {format_bytes(size)} shown)*"


def _table(workspace: Path, relative: str) -> tuple[list[dict[str, str]], int] | None:
    """The first `TABLE_ROWS` rows as dicts keyed by the header, and how many rows there are;
    None when it is no CSV with a header: not UTF-8, too wide, or a cell past the `csv`
    module's limit (128KB)."""
    try:
        with open(open_inside(workspace, relative), newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or len(header) > _MAX_COLUMNS:
                return None
            names = _unique(header)
            rows: list[dict[str, str]] = []
            total = 0
            for row in reader:
                total += 1
                if len(rows) < TABLE_ROWS:
                    cells = zip(names, row, strict=False)
                    rows.append({name: _inert(text.visible(value)) for name, value in cells})
    except (csv.Error, UnicodeDecodeError, OSError):
        return None
    return rows, total


def _unique(header: list[str]) -> list[str]:
    names: list[str] = []
    for i, name in enumerate(header):
        shown = _inert(text.visible(name, newlines=False).strip()) or f"column {i + 1}"
        while shown in names:
            shown += "'"
        names.append(shown)
    return names


_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~])")


def shown_literally(name: str) -> str:
    """A name as literal Markdown text on one line."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text.visible(name, newlines=False))


def fenced(content: str, syntax: str = "") -> str:
    """`content` as a code block (highlighted as `syntax`, a plain word) whose fence no
    backtick run inside it can close."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", content)), default=0) + 1)
    info = syntax if re.fullmatch(r"[A-Za-z0-9_+-]*", syntax) else ""
    return f"{fence}{info}\n{content}\n{fence}"


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_LINK_TARGET = re.compile(
    r"(\]\(\s*<?|^ {0,3}\[[^\]]*\]:\s*<?)(?!https?:|mailto:)([A-Za-z][A-Za-z0-9+.-]*:)", re.M
)


def safe_markdown(markdown: str) -> str:
    """`markdown` with raw HTML shown as text (`<` outside code as `&lt;`) and links to anything
    but web and mail addresses (`javascript:`, `data:`, ...) made inert."""
    lines = []
    fence: str | None = None
    for line in markdown.split("\n"):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened[1][0] == fence[0] and len(opened[1]) >= len(fence):
                fence = None
            lines.append(line)
            continue
        if opened:
            fence = opened[1]
            lines.append(line)
            continue
        lines.append(_outside_code_spans(line))
    return "\n".join(lines)


def _outside_code_spans(line: str) -> str:
    parts, end = [], 0
    for span in _CODE_SPAN.finditer(line):
        parts += [_inert(line[end : span.start()]), span[0]]
        end = span.end()
    parts.append(_inert(line[end:]))
    return "".join(parts)


def _inert(segment: str) -> str:
    return _LINK_TARGET.sub(r"\1#blocked-\2", segment.replace("<", "&lt;"))
