"""Property: no mutation of a real Toka spec makes loading or planning fail other than with a
located `ConfigError`.

Hypothesis picks one of Toka's real files (a v0.3 agent spec or an orchestration TOML), parses
it, and applies 1-3 random mutations at random key paths: keys deleted, values changed to
another type, keys renamed. The mutated document is written as YAML (next to copies of the
other v0.3 specs, so that dependencies resolve) and must keep the rule of
`spec_mutations.check`: `validate` raises nothing, `load` and `plan` raise only
`ConfigError`, and every issue names a given file and a non-empty key path, but for the
file-level messages of `spec_mutations.FILE_LEVEL_MESSAGES`.

The strategies live in benchmarks/spec_mutations.py, shared with benchmarks/fuzz_specs.py,
which runs the same property 10,000 times; this module runs a modest number of examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from spec_mutations import (  # noqa: E402
    TOML_FILES,
    V03_FILES,
    MutatedSpec,
    Workspace,
    check,
    mutated_specs,
    unmutated,
)

from toka_agents import validate  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("mutated-specs"))


@pytest.mark.parametrize("source", [*V03_FILES, *TOML_FILES], ids=lambda path: path.name)
def test_unmutated_files_written_as_yaml_validate_cleanly(workspace: Workspace, source: Path) -> None:
    """The harness itself: a real file, rewritten as YAML in the workspace, has no issue at all."""
    _, given_paths = workspace.write(unmutated(source))
    checked = validate(given_paths)
    assert checked.ok, checked.issues


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=mutated_specs())
def test_mutated_specs_fail_only_with_located_config_errors(
    workspace: Workspace, spec: MutatedSpec
) -> None:
    breaks = check(spec, workspace)
    assert not breaks, "\n".join(str(one) for one in breaks)
