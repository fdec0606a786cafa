"""Reads config files and directories, recognises each file's dialect, merges them into one
`Orchestration`, and collects every problem on the way with its file and key path.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from toka_agents.config.models import TASK_TAGS, Agent, Orchestration, Settings
from toka_agents.errors import ConfigError, ConfigIssue

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass
class Fragment:
    """What one file contributes: settings (only the keys it sets), agents, and problems."""

    file: str
    settings: Settings | None = None
    agents: list[Agent] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    # Agents written in this file that did not validate: known by name, so that others
    # requiring them are not reported as requiring an unknown agent.
    broken_agents: list[str] = field(default_factory=list)


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
        return _failed(shown, f"directory holds no config files ({suffixes})")
    if not path.exists():
        return _failed(shown, "no such file")
    if path.suffix not in CONFIG_SUFFIXES:
        return _failed(shown, "not a config file: use .yaml, .yml or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _failed(shown, f"cannot read: {exc}")
    try:
        document = _parse(text, path.suffix)
    except yaml.YAMLError as exc:
        return _failed(shown, _yaml_problem(exc))
    except tomllib.TOMLDecodeError as exc:
        return _failed(shown, f"invalid TOML: {exc}")
    if document is None or document == {}:
        return _failed(shown, "the file is empty")
    if not isinstance(document, dict):
        found = type(document).__name__
        return _failed(shown, f"expected a mapping of keys at the top level, found a {found}")
    return dialect_reader(document)(document, path, shown)


# libyaml's loader when PyYAML was built with it: the same documents, about 3x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(text: str, suffix: str) -> Any:
    if suffix == ".toml":
        return tomllib.loads(text)
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _failed(shown: str, message: str) -> Fragment:
    return Fragment(file=shown, issues=[ConfigIssue(shown, "", message)])


def dialect_reader(document: dict[str, Any]) -> DialectReader:
    """Pick the reader of a parsed document by the keys it has, whatever its syntax."""
    from toka_agents.config import native, toka_spec, toka_toml

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


def issues_from_validation(
    error: ValidationError, file: str, prefix: str = "", sources: dict[str, str] | None = None
) -> list[ConfigIssue]:
    """Turn pydantic's errors into ConfigIssues with dotted key paths and plain messages.

    `sources` maps key paths of the native model to where a dialect wrote them
    (`limits.memory` -> `security.resource_limits.max_memory`); the longest match wins.
    """
    issues = []
    for detail in error.errors():
        path = ".".join(str(part) for part in detail["loc"] if part not in TASK_TAGS)
        if sources:
            path = source_path(path, sources)
        path = ".".join(part for part in (prefix, path) if part)
        issues.append(ConfigIssue(file, path, _plain_message(detail)))
    return issues


def source_path(path: str, sources: dict[str, str]) -> str:
    parts = path.split(".") if path else []
    for cut in range(len(parts), -1, -1):
        head = ".".join(parts[:cut])
        if head in sources:
            return ".".join(part for part in (sources[head], *parts[cut:]) if part)
    return path


def _plain_message(detail: Any) -> str:
    kind = detail["type"]
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return "unknown key (`toka schema` lists the keys of the format)"
    message: str = detail["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = detail.get("input")
    if isinstance(value, (str, int, float)) and repr(value) not in message:
        message = f"{message} (got {value!r})"
    return message
