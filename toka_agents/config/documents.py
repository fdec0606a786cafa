"""Turns one config file into one parsed document, or into one problem saying why not.

It owns the bounds every dialect shares: the size of a file (refused before it is parsed),
the expansion of YAML aliases (a "billion laughs" is one problem, not a hang), and
duplicated keys (an error naming the key's path and both lines, where PyYAML would keep the
last one silently).

YAML keeps PyYAML's meaning (YAML 1.1: `yes` is true, `0755` is octal, `<<` merges). PyYAML
with libyaml takes seconds for a few MB, so a document goes through yaml-rs, a YAML 1.2
parser about 20x faster, when both are known to read it the same: every plain scalar either
could read as something other than a string is read by both and compared, and what the
comparison cannot vouch for (tags, aliases, merge keys, timestamps, several documents) goes
through PyYAML. So do documents yaml-rs refuses: PyYAML names the problem, as it always has.
Configs as tools write them take the fast path; hand-written ones with anchors take PyYAML's.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
import yaml_rs

MAX_CONFIG_BYTES = 10 * 1024**2
"""The largest config file read: a bound on the work one file may cause, far above real configs."""
MAX_ALIAS_NODES = 100_000
"""The most nodes YAML aliases may add to a document by repeating what their anchors hold."""


class DocumentProblem(Exception):
    """Why a file gives no document: a one-line message, and the key path it is at, if any."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def read_document(file: Path) -> Any:
    """The parsed content of a `.yaml`, `.yml` or `.toml` file; raises `DocumentProblem`."""
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                size = max(file.stat().st_size, len(data))
                raise DocumentProblem(
                    f"the file is {_megabytes(size)}, over the {_megabytes(MAX_CONFIG_BYTES)} "
                    "a config may be"
                )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentProblem(f"cannot read: {exc}") from None
    if "\r" in text:  # as a file opened in text mode reads it
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if file.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DocumentProblem(f"invalid TOML: {exc}") from None
    return parse_yaml(text.removeprefix("\ufeff"))


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:.1f}".removesuffix(".0") + "MB"


def parse_yaml(text: str) -> Any:
    """One YAML document as PyYAML's safe loader reads it, with duplicated keys and alias
    bombs refused; raises `DocumentProblem`."""
    if _fast_parser_agrees(text):
        try:
            return yaml_rs.loads(
                text,
                parse_datetime=False,  # it would read even quoted "12:30:00" as a time
                alias_limits=yaml_rs.AliasLimits(max_total_replayed_events=MAX_ALIAS_NODES),
                duplicate_key_policy=yaml_rs.DuplicateKeyPolicy.Error,
            )
        except yaml_rs.YAMLDecodeError:
            pass  # PyYAML says where and what, in the words users know
    return _pyyaml_load(text)


# --- Whether yaml-rs reads the document as PyYAML would ---------------------------------

# What the comparison of scalars cannot vouch for: tags (`!`), aliases (`*`; yaml-rs and
# PyYAML differ on recursive ones), merge keys (`<<`) and complex keys (`? `) where a node
# starts; flow collections as keys (`[1]: x`: yaml-rs makes a tuple, PyYAML refuses) and
# flow keys with no space after their colon (`{a:, b}`: the same); directives and document
# markers (yaml-rs reads several documents as a list); timestamps, whose plain scalars may
# hold spaces; and line breaks other than \n and \r, which YAML 1.1 has more of.
_NODE_MARKS = ("!", "*", "<<", "? ", "?\n")
_PYYAML_ONLY_TEXT = ("\n%", "\n---", "\n...", "]:", "}:", ":,", ":]", ":}")
_OTHER_BREAKS = ("\x85", "\u2028", "\u2029")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]")


def _starts_a_node(text: str, mark: str) -> bool:
    """Whether `mark` occurs where a YAML node may start: first, or after a space or `[{,`."""
    at = text.find(mark)
    while at != -1:
        if at == 0 or text[at - 1] in " \t\n\r[{,":
            return True
        at = text.find(mark, at + 1)
    return False


# A plain scalar that either parser may read as a number, a boolean or null: a digit or a dot
# and a digit first, `.inf`-like words, `~`, `=`, and every case of the words YAML 1.1 or 1.2
# reads as booleans or null. Any other plain scalar is a string to both. The three places a
# plain scalar starts (a line, after `key:`, in a flow collection) are three patterns that
# begin with a fixed character, which the regex engine finds fast; possessive repeats and the
# look-ahead on the first character keep each try short.
_WORDS = (
    r"[yY]|[nN]|[yY][eE][sS]|[nN][oO]|[oO][nN]|[oO][fF][fF]|[tT][rR][uU][eE]"
    r"|[fF][aA][lL][sS][eE]|[nN][uU][lL][lL]"
)
_SCALAR = (
    r"(?=[-+.0-9~=yYnNoOtTfF&])(?:&\S+[ \t]+)?"
    rf"([-+]?\.?[0-9][^\s,\[\]{{}}#]*?|[-+]?\.[A-Za-z]+|[~=]|(?:{_WORDS}))"
    r"(?=[ \t]*(?:$|#|[,\]}]|:(?:[ \t]|$)))"
)
_MAYBE_NOT_STRING = [
    re.compile(r"\n[ \t]*+(?:-[ \t]++)*+" + _SCALAR, re.MULTILINE),
    re.compile(r":[ \t]++" + _SCALAR, re.MULTILINE),
    re.compile(r"[\[{,][ \t]*+" + _SCALAR, re.MULTILINE),
]


def _fast_parser_agrees(text: str) -> bool:
    """Whether yaml-rs reads every scalar of `text` as PyYAML does (False when unsure)."""
    if "\r" in text:
        return False  # the patterns know \n only; files are read with \r\n and \r made \n
    body = "\n" + text.removeprefix("---\n")
    if any(mark in body for mark in (*_PYYAML_ONLY_TEXT, *_OTHER_BREAKS)) or _TIMESTAMP.search(text):
        return False
    if any(_starts_a_node(text, mark) for mark in _NODE_MARKS):
        return False
    lines = "\n" + text
    scalars = sorted({scalar for pattern in _MAYBE_NOT_STRING for scalar in pattern.findall(lines)})
    if not scalars:
        return True
    listed = "".join(f"- {scalar}\n" for scalar in scalars)
    try:
        by_pyyaml = yaml.load(listed, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
        by_yaml_rs = yaml_rs.loads(listed, parse_datetime=False)
    except (yaml.YAMLError, yaml_rs.YAMLDecodeError, ValueError):
        return False
    if not isinstance(by_yaml_rs, list) or len(by_yaml_rs) != len(by_pyyaml):
        return False
    return all(_same_value(a, b) for a, b in zip(by_pyyaml, by_yaml_rs, strict=True))


def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return False  # equal to nothing: let PyYAML read it
    return a == b


# --- PyYAML, with the checks it lacks ---------------------------------------------------

# libyaml's loader when PyYAML was built with it: the same documents, about 3x faster.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


class _DuplicatedKey(Exception):
    def __init__(self, mapping: yaml.MappingNode, first: yaml.Node, again: yaml.Node) -> None:
        super().__init__()
        self.mapping, self.first, self.again = mapping, first, again


class _CheckingLoader(_YAML_LOADER):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader, refusing a mapping that holds one key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden: that is what merging is for
            if key_node.tag == _VALUE_TAG:
                key = key_node.value  # a key `=`, which PyYAML reads as the string "="
            else:
                key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: PyYAML's own check names it
            if first is not key_node:
                raise _DuplicatedKey(node, first, key_node)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _pyyaml_load(text: str) -> Any:
    loader = _CheckingLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _starts_a_node(text, "*") and _expanded_by_aliases(root) > MAX_ALIAS_NODES:
            raise DocumentProblem(
                f"too many aliases: they repeat more than {MAX_ALIAS_NODES:,} nodes of the document"
            )
        return loader.construct_document(root)
    except _DuplicatedKey as duplicated:
        key_path = [*_path_to(root, duplicated.mapping), duplicated.again.value]
        raise DocumentProblem(
            f"duplicated key at line {duplicated.again.start_mark.line + 1} "
            f"(first at line {duplicated.first.start_mark.line + 1})",
            ".".join(str(part) for part in key_path),
        ) from None
    except yaml.YAMLError as exc:
        raise DocumentProblem(_yaml_problem(exc)) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_by_aliases(root: yaml.Node) -> float:
    """How many nodes aliases add: the document's size with every alias replaced by a copy
    of its anchor's node, less its size as written. Infinite for a recursive anchor."""
    expanded: dict[int, float] = {}
    distinct = 0
    # An iterative post-order walk: documents may nest deeper than Python's recursion limit.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in _children(node))
            continue
        if id(node) in expanded:
            if math.isnan(expanded[id(node)]):
                return math.inf  # reached again while its own children are walked: a cycle
            continue
        distinct += 1
        expanded[id(node)] = math.nan  # being walked
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)
        if any(math.isnan(expanded.get(id(child), 0.0)) for child in _children(node)):
            return math.inf
    return expanded[id(root)] - distinct


def _path_to(root: yaml.Node, target: yaml.Node) -> list[str | int]:
    """The key path from the document's root to `target`, the first way there."""
    paths: dict[int, list[str | int]] = {id(root): []}
    frontier = [root]
    while frontier:
        following = []
        for node in frontier:
            if node is target:
                return paths[id(node)]
            steps: list[tuple[str | int, yaml.Node]] = []
            if isinstance(node, yaml.MappingNode):
                steps = [(str(key.value), value) for key, value in node.value]
            elif isinstance(node, yaml.SequenceNode):
                steps = list(enumerate(node.value))
            for step, child in steps:
                if id(child) not in paths:
                    paths[id(child)] = [*paths[id(node)], step]
                    following.append(child)
        frontier = following
    return []


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
