"""Reads config files and directories, recognises each file's dialect, merges them into one
`Orchestration`, and collects every problem on the way with its file and key path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toka_agents.config import native, toka_spec, toka_toml
from toka_agents.config.collector import collector_paused
from toka_agents.config.documents import DocumentProblem, read_document
from toka_agents.config.fragments import Fragment, failed
from toka_agents.config.models import Agent, Orchestration, Settings
from toka_agents.errors import ConfigError, ConfigIssue

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass
class LoadResult:
    """Everything found in the given paths, usable even when some of it is broken."""

    orchestration: Orchestration | None
    issues: list[ConfigIssue]
    warnings: list[ConfigIssue]
    broken_agents: set[str]


# A dialect reader turns one parsed document into a Fragment.
DialectReader = Callable[[dict[str, Any], Path, str], Fragment]


def load(*paths: str | Path) -> Orchestration:
    """Load one orchestration from config files and directories; raise `ConfigError` on any problem."""
    result = load_paths(paths)
    if result.issues:
        raise ConfigError(result.issues)
    assert result.orchestration is not None
    return result.orchestration


def load_paths(paths: Sequence[str | Path]) -> LoadResult:
    """Load what can be loaded and collect every problem instead of stopping at the first."""
    if not paths:
        issue = ConfigIssue("<command line>", "", "no config path given")
        return LoadResult(None, [issue], [], set())
    with collector_paused():
        fragments = [_read_file(file, shown) for file, shown in _config_files(paths)]
        return _merge(fragments, paths)


def _config_files(paths: Iterable[str | Path]) -> Iterable[tuple[Path, str]]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
            if not found:
                yield path, str(given)  # _read_file reports that the directory has no configs
            for file in found:
                yield file, str(Path(given) / file.name)
        else:
            yield path, str(given)


def _read_file(path: Path, shown: str) -> Fragment:
    if path.is_dir():
        suffixes = ", ".join(f"*{s}" for s in CONFIG_SUFFIXES)
        return failed(shown, f"directory holds no config files ({suffixes})")
    if not path.exists():
        return failed(shown, "no such file")
    if path.suffix not in CONFIG_SUFFIXES:
        return failed(shown, "not a config file: use .yaml, .yml or .toml")
    try:
        document = read_document(path)
    except DocumentProblem as problem:
        return failed(shown, problem.message, problem.path)
    if document is None or document == {}:
        return failed(shown, "the file is empty")
    if not isinstance(document, dict):
        found = type(document).__name__
        return failed(shown, f"expected a mapping of keys at the top level, found a {found}")
    return dialect_reader(document)(document, path, shown)


def dialect_reader(document: dict[str, Any]) -> DialectReader:
    """Pick the reader of a parsed document by the keys it has, whatever its syntax."""
    if "$schema" in document and "properties" in document:
        return _json_schema
    if toka_toml.recognises(document):
        return toka_toml.read
    if toka_spec.recognises(document):
        return toka_spec.read
    return native.read


def _json_schema(document: dict[str, Any], path: Path, shown: str) -> Fragment:
    note = ConfigIssue(shown, "", "skipped: a JSON Schema, not an agent or orchestration config")
    return Fragment(file=shown, warnings=[note])


def _merge(fragments: list[Fragment], paths: Sequence[str | Path]) -> LoadResult:
    # A file-wide setting shared by several agents may be reported once per agent.
    issues = list(dict.fromkeys(issue for fragment in fragments for issue in fragment.issues))
    warnings = [warning for fragment in fragments for warning in fragment.warnings]
    broken = {name for fragment in fragments for name in fragment.broken_agents}

    agents: list[Agent] = []
    first_file: dict[str, str] = {}
    for fragment in fragments:
        for agent in fragment.agents:
            if agent.name in first_file:
                issues.append(
                    ConfigIssue(
                        fragment.file,
                        agent.origin.key("name"),
                        f"agent {agent.name!r} is already defined in {first_file[agent.name]}",
                    )
                )
                continue
            first_file[agent.name] = fragment.file
            agents.append(agent)

    settings = Settings()
    for fragment in fragments:
        if fragment.settings is not None:
            chosen = {key: getattr(fragment.settings, key) for key in fragment.settings.model_fields_set}
            settings = settings.model_copy(update=chosen)

    if not agents and not issues:
        issues.append(ConfigIssue(str(paths[0]), "", "no agents defined"))
    if issues and not agents:
        return LoadResult(None, issues, warnings, broken)
    name = settings.name or _name_from_path(Path(paths[0]))
    orchestration = Orchestration(
        **{**{key: getattr(settings, key) for key in Settings.model_fields}, "name": name},
        agents=agents,
        sources=[fragment.file for fragment in fragments],
    )
    return LoadResult(orchestration, issues, warnings, broken)


def _name_from_path(path: Path) -> str:
    base = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._") or "orchestration"
