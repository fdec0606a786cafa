"""Random mutations of Toka's real specs, and the rule the loader must keep on every one of them.

Shared by tests/test_properties.py (a short hypothesis run in the test suite) and
benchmarks/fuzz_specs.py (the same property, 10,000 examples). `mutated_specs()` picks a
real file (tests/data/toka-specs, copied from Toka: a v0.3 agent spec or an orchestration TOML, each dialect
half the time), parses it, and applies 1-3 mutations, each at a key path found by a random
walk down from the root:

- delete: the key (or list item) is removed;
- retype: the value becomes one of another type (None, bool, int, float, str, list, mapping),
  either unrelated or the same data reshaped (a list joined into a string, a mapping turned
  into its keys, values or single-key maps, a scalar wrapped in a list);
- rename: the key gets a typo, another key of the format, or a random name.

`check()` writes the result as YAML (the loader tells dialects by their keys, not their
syntax) and holds the rule: `validate` raises nothing; `load` and `plan` raise nothing but
`ConfigError`; and every issue they report names a given file and a non-empty key path,
except the file-level issues of `FILE_LEVEL_MESSAGES`.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from hypothesis import strategies as st

from toka_agents import ConfigError, ConfigIssue, load, plan, validate
from toka_agents.config import models

SPECS = Path(__file__).resolve().parents[1] / "tests" / "data" / "toka-specs"
V03_FILES = sorted((SPECS / "v0.3").glob("*.yaml"))
TOML_FILES = [SPECS / "config" / "agents.toml", SPECS / "config" / "testing-agents.toml"]

# The only issues allowed without a key path: they are about a whole file or the whole set of
# files, so there is no key to point at. Anything else without a key path breaks the rule.
FILE_LEVEL_MESSAGES = frozenset(
    {
        # Every top-level key of the file was deleted.
        "the file is empty",
        # No agent is left in any given file (the TOML validated alone lost its `agents`) and
        # nothing else was reported: the problem is the set, not a key of it.
        "no agents defined",
    }
)

Key = str | int
KeyPath = tuple[Key, ...]
MutationKind = Literal["delete", "retype", "rename"]
Call = Literal["validate", "load", "plan"]

# Integers hypothesis rarely or never draws: YAML integers have no bound, and 10**400 is past
# the range of a float.
_EDGE_INTS = (0, -1, 2**63, 10**400)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))


@functools.cache
def original(file: Path) -> dict[str, Any]:
    """A real file, parsed (never mutate the result: `mutated_specs` deep-copies it)."""
    text = file.read_text(encoding="utf-8")
    document = tomllib.loads(text) if file.suffix == ".toml" else yaml.safe_load(text)
    assert isinstance(document, dict), file
    return document


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {str(key) for key in node}.union(*(_keys(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(item) for item in node))
    return set()


# Other names a key may be renamed to: every key of the real files and of the native format.
_NATIVE_KEYS = {
    name
    for model in (models.OrchestrationFile, models.Agent, models.LlmTask, models.CodeTask, models.Limits)
    for name in model.model_fields
}
KEY_POOL = sorted(_NATIVE_KEYS.union(*(_keys(original(f)) for f in [*V03_FILES, *TOML_FILES])))


@dataclass(frozen=True)
class Mutation:
    kind: MutationKind
    path: KeyPath
    change: str = ""

    def __str__(self) -> str:
        where = ".".join(str(key) for key in self.path)
        return f"{self.kind} {where}" + (f": {self.change}" if self.change else "")


@dataclass(frozen=True)
class MutatedSpec:
    """A real file's document after `mutations` (none for the file as it is)."""

    source: Path
    document: dict[str, Any]
    mutations: tuple[Mutation, ...] = ()

    def __repr__(self) -> str:
        changes = "; ".join(str(mutation) for mutation in self.mutations) or "unmutated"
        return f"MutatedSpec({self.source.relative_to(SPECS)}: {changes})"


def unmutated(source: Path) -> MutatedSpec:
    return MutatedSpec(source, copy.deepcopy(original(source)))


@st.composite
def mutated_specs(draw: st.DrawFn) -> MutatedSpec:
    """A real v0.3 spec or orchestration TOML (each dialect half the time) after 1-3 mutations."""
    source = draw(st.sampled_from(draw(st.sampled_from([V03_FILES, TOML_FILES]))))
    document = copy.deepcopy(original(source))
    mutations = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(_key_path(document))
        if not path:  # nothing left to mutate
            break
        mutations.append(draw(_mutation(document, path)))
    return MutatedSpec(source, document, tuple(mutations))


def _children(node: Any) -> list[Key]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


@st.composite
def _key_path(draw: st.DrawFn, document: dict[str, Any]) -> KeyPath:
    """A walk down from the root that stops at each level with odds 1/3, and always at a leaf.

    Going on is the choice hypothesis deems simplest (0, 1), as it favours those.
    """
    path: KeyPath = ()
    node: Any = document
    while children := _children(node):
        if path and draw(st.integers(0, 2)) == 2:
            break
        key = draw(st.sampled_from(children))
        path, node = (*path, key), node[key]
    return path


@st.composite
def _mutation(draw: st.DrawFn, document: dict[str, Any], path: KeyPath) -> Mutation:
    """Mutate `document` in place at `path` (not the root) and say how."""
    *above, key = path
    parent: Any = document
    for step in above:
        parent = parent[step]
    kinds: list[MutationKind] = ["delete", "retype"]
    if isinstance(parent, dict):
        kinds.append("rename")
    kind = draw(st.sampled_from(kinds))
    if kind == "delete":
        del parent[key]
        return Mutation(kind, path)
    if kind == "retype":
        old = parent[key]
        parent[key] = new = draw(_other_type(old))
        return Mutation(kind, path, f"{_type(old)} -> {_shown(new)}")
    name = draw(_new_name(str(key)))
    items = list(parent.items())
    parent.clear()
    parent.update((name if old_key == key else old_key, value) for old_key, value in items)
    return Mutation(kind, path, f"-> {name!r}")


def _type(value: Any) -> str:
    return "none" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    return _truncated(repr(value), 80)


def _truncated(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _other_type(value: Any) -> st.SearchStrategy[Any]:
    """A value of any type but `value`'s: unrelated, or `value`'s own data reshaped."""
    parts = value if isinstance(value, (list, dict)) else [value]
    reshaped_lists = [[value]]
    if isinstance(value, dict):
        reshaped_lists += [list(value), list(value.values()), [{k: v} for k, v in value.items()]]
    if isinstance(value, list):
        reshaped_dict = {str(i): item for i, item in enumerate(value)}
    else:
        reshaped_dict = {", ".join(str(part) for part in parts): None}
    choices = {
        "none": st.none(),
        "bool": st.booleans(),
        "int": st.one_of(st.integers(), st.sampled_from(_EDGE_INTS)),
        "float": st.floats(),
        "str": st.one_of(st.text(max_size=20), st.just(", ".join(str(part) for part in parts))),
        "list": st.one_of(st.sampled_from(reshaped_lists), st.lists(_SCALARS, max_size=3)),
        "dict": st.one_of(
            st.just(reshaped_dict), st.dictionaries(st.text(max_size=10), _SCALARS, max_size=3)
        ),
    }
    choices.pop(_type(value), None)
    return st.one_of(*choices.values())


@st.composite
def _typo(draw: st.DrawFn, key: str) -> str:
    i = draw(st.integers(0, max(len(key) - 1, 0)))
    return draw(
        st.sampled_from(
            [
                key[:i] + key[i + 1 :],  # a letter dropped
                key[:i] + key[i : i + 1] * 2 + key[i + 1 :],  # a letter doubled
                key[:i] + key[i + 1 : i + 2] + key[i : i + 1] + key[i + 2 :],  # two swapped
                key.upper(),
                key.replace("_", "-") if "_" in key else key.replace("-", "_"),
            ]
        )
    )


def _new_name(key: str) -> st.SearchStrategy[str]:
    names = st.one_of(_typo(key), st.sampled_from(KEY_POOL), st.text(min_size=1, max_size=12))
    return names.filter(lambda name: name != key)


class Workspace:
    """Where mutated specs are written: a v0.3 spec next to copies of the eight others (so that
    its dependencies resolve), an orchestration TOML alone, each in a directory of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, spec: MutatedSpec) -> tuple[str, list[str]]:
        """Write the document as YAML; return its path and every path to validate it with."""
        home = self.root / spec.source.stem
        if not home.exists():
            home.mkdir(parents=True)
            for other in V03_FILES if spec.source in V03_FILES else []:
                if other != spec.source:
                    shutil.copy(other, home / other.name)
        target = home / f"{spec.source.stem}.yaml"
        target.write_text(yaml.safe_dump(spec.document, sort_keys=False), encoding="utf-8")
        companions = sorted(str(path) for path in home.iterdir() if path != target)
        return str(target), [str(target), *companions]


@dataclass(frozen=True)
class Break:
    """One way a call broke the rule: an exception, or an issue that is not located."""

    call: Call
    what: str
    where: str = ""
    """For an exception: the innermost frame of toka_agents it went through."""

    @property
    def kind(self) -> str:
        """Breaks of one kind share the exception's type and place, or the issue's message with
        its quoted values and numbers blanked."""
        if self.where:
            return f"{self.call}: {self.what.split(':', 1)[0]} at {self.where}"
        return f"{self.call}: " + re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", self.what)

    def __str__(self) -> str:
        return f"{self.call}: {self.what}" + (f" (at {self.where})" if self.where else "")


def check(spec: MutatedSpec, workspace: Workspace) -> list[Break]:
    """Every way `spec` breaks the rule; empty if it keeps it.

    `validate` gets the mutated file with its companions; `load` and `plan` get it alone.
    """
    target, given = workspace.write(spec)
    breaks: list[Break] = []
    try:
        breaks += _unlocated("validate", validate(given).issues, given)
    except Exception as exc:  # validate reports problems as issues: it may raise nothing
        breaks.append(_raised("validate", exc))
    try:
        orchestration = load(target)
    except ConfigError as exc:
        return breaks + _unlocated("load", exc.issues, [target])
    except Exception as exc:
        return breaks + [_raised("load", exc)]
    try:
        plan(orchestration)
    except ConfigError as exc:
        breaks += _unlocated("plan", exc.issues, [target])
    except Exception as exc:
        breaks.append(_raised("plan", exc))
    return breaks


def _unlocated(call: Call, issues: list[ConfigIssue], given: list[str]) -> list[Break]:
    breaks = []
    for issue in issues:
        if issue.file not in given:
            breaks.append(Break(call, f"issue names a file not given ({issue.file}): {issue}"))
        elif not issue.path and issue.message not in FILE_LEVEL_MESSAGES:
            breaks.append(Break(call, f"issue without a key path: {issue.message}"))
    return breaks


def _raised(call: Call, exc: Exception) -> Break:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if "/toka_agents/" in frame.filename]
    where = "?"
    if ours:
        where = f"toka_agents/{ours[-1].filename.rsplit('/toka_agents/', 1)[1]}:{ours[-1].lineno}"
    first_line = (str(exc).splitlines() or [""])[0]
    return Break(call, f"{type(exc).__name__}: {_truncated(first_line, 200)}", where)
