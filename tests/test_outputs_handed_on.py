"""The files of an agent's declared outputs are named to the agents after it as the workspace
holds them once its last task is done: the workspace is walked then, once per agent, not after
each of its tasks. Real Prefect server, real Docker engine."""

from __future__ import annotations

import pytest
from conftest import write_config

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

READS_WHAT_WORK_HANDS_ON = """\
  - name: next
    requires: [work]
    tasks:
      - name: read
        code:
          language: python
          source: |
            import json, os
            print("handed on:", json.loads(os.environ["TOKA_UPSTREAM"])["work"]["files"])
"""
"""The agent `next`, after `work`: it prints the files `work` hands on."""

TWO_TASKS = (
    """
name: handed
agents:
  - name: work
    capabilities: [filesystem-write]
    outputs: ["*.txt"]
    tasks:
      - name: first
        code: {language: shell, source: "echo one > first.txt"}
      - name: second
        code: {language: shell, source: "echo two > second.txt"}
"""
    + READS_WHAT_WORK_HANDS_ON
)


def test_an_agent_hands_on_the_outputs_its_last_task_leaves(tmp_path):
    result = run(write_config(tmp_path, TWO_TASKS))

    assert result.ok, result.state.message
    first, second, read = result.outcomes
    assert "handed on: ['first.txt', 'second.txt']" in read.stdout_tail
    assert second.files == ["first.txt", "second.txt"]
    assert first.files == []  # not its agent's last task: the workspace is not walked for it
