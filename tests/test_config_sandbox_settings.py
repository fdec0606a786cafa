"""`sandbox:` of a config is a config model like the others: an unknown key is a problem named
by its path, and the loaded settings never change."""

from __future__ import annotations

import textwrap

import pytest
from conftest import write_config
from pydantic import ValidationError

from toka_agents import validate
from toka_agents.config.sandbox_settings import SandboxSettings

CONFIG = """
name: typo
sandbox: {network: bridge, pool_sise: 2}
agents:
  - name: a
    tasks: [{name: t, code: {language: shell, source: "true"}}]
"""


def test_an_unknown_key_under_sandbox_is_a_problem(tmp_path):
    path = write_config(tmp_path, textwrap.dedent(CONFIG))
    found = [str(issue) for issue in validate([path]).issues]
    assert any(p.startswith(f"{path}: sandbox.pool_sise: unknown key") for p in found), found


def test_sandbox_settings_are_frozen():
    settings = SandboxSettings(network="bridge")
    with pytest.raises(ValidationError):
        settings.network = "other"  # type: ignore[misc]
