"""How text that toka-agents did not write is shown: literally.

Output lines, state messages, model replies, file names and config values may come from a
hostile party. Before they reach a terminal (or a log line, or a state message) they pass
through here: control characters become visible escapes (`\\x1b`), so they can neither clear
the screen, set a window title nor reorder text. Rich markup is the printers' business: they
print this text as `rich.text.Text` or with `markup=False`, never as markup.
"""

from __future__ import annotations

import re

_SHOWN_AS_IS = {0x09, 0x0A}  # tab and newline
_BIDI_CONTROLS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]


def _escapes() -> dict[int, str]:
    table = {
        code: f"\\x{code:02x}"
        for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
        if code not in _SHOWN_AS_IS
    }
    table.update({code: f"\\u{code:04x}" for code in _BIDI_CONTROLS})
    # Lone surrogates: undecodable bytes of a file name (surrogateescape) show as those bytes;
    # a stream encoder would refuse them.
    table.update({code: f"\\x{code - 0xDC00:02x}" for code in range(0xDC80, 0xDD00)})
    table.update({code: f"\\u{code:04x}" for code in range(0xD800, 0xE000) if code not in table})
    return table


_VISIBLE = _escapes()
_NEEDS_ESCAPES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_ONE_LINE = {**_VISIBLE, 0x0A: "\\n", 0x2028: "\\u2028", 0x2029: "\\u2029"}

MESSAGE_LIMIT = 2_000
"""The most characters of a message shown on one line, unless its writer says otherwise."""


def visible(text: str, *, newlines: bool = True) -> str:
    """`text` with every control character but newline and tab (C0, DEL, C1, bidi overrides
    and isolates, lone surrogates) shown as an escape such as `\\x1b` or `\\u202e`; with
    `newlines=False`, newlines too (`\\n`), for a name that must stay on its line."""
    if not newlines:
        return text.translate(_ONE_LINE)
    # Most lines hold nothing to escape, and one search is faster than a translate.
    return text.translate(_VISIBLE) if _NEEDS_ESCAPES.search(text) else text


def one_line(text: str, limit: int | None = MESSAGE_LIMIT) -> str:
    """`text` as one visible line: stripped, newlines shown as `\\n`, and, past `limit`
    characters, cut with the cut named: `... (cut: 1,234 more characters)`. The count is of
    `text`'s own characters; the whole line, note included, is at most `limit` long."""
    text = text.strip().replace("\r\n", "\n")
    shown = text.translate(_ONE_LINE)
    if limit is None or len(shown) <= limit:
        return shown
    kept = min(len(text), limit)
    while True:  # shorten until the kept part and the note fit: a few rounds at most
        note = f" ... (cut: {len(text) - kept:,} more characters)"
        line = text[:kept].rstrip().translate(_ONE_LINE)
        if len(line) + len(note) <= limit:
            return line + note
        if kept == 0:
            return note.strip()[:limit]
        # An escape is at most 6 characters for 1: this never cuts more than it must.
        kept = max(0, kept - max(1, (len(line) + len(note) - limit) // 6))
