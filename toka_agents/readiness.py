"""Whether a plan's LLM tasks can reach their model: checked before any task starts, so a run
never stops halfway for want of a provider, a key or a model name."""

from __future__ import annotations

import os
from collections.abc import Mapping

from toka_agents.config.models import LlmSettings
from toka_agents.llm.gateway import MODEL_ENV
from toka_agents.planning import Plan


def llm_refusal(plan: Plan, *, dry_run: bool) -> str | None:
    """Why this plan cannot run its LLM tasks, in one message, or None when it can.

    Checked before any task starts, so a run never stops halfway for want of a model.
    """
    if dry_run:
        return None
    agents = [agent for agent in plan.agents if any(task.kind == "llm" for task in agent.tasks)]
    if not agents:
        return None
    count = sum(1 for agent in agents for task in agent.tasks if task.kind == "llm")
    names = ", ".join(agent.name for agent in agents)
    unconfigured = [agent.name for agent in agents if agent.llm is None]
    if unconfigured:
        which = "" if len(unconfigured) == len(agents) else f" for {', '.join(unconfigured)}"
        return (
            f"{count} LLM task(s) of agents {names} need an LLM provider, and none is "
            f"configured{which}. Configure one in the orchestration, e.g. "
            "`llm: {provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}` "
            "(native YAML) or an [llm] table (orchestration TOML), or run with --dry-run "
            "(flow parameter dry_run) to walk the plan without a model."
        )
    problems = []
    for agent in agents:
        assert agent.llm is not None
        problem = environment_problem(agent.llm)
        if problem is not None and problem not in problems:
            problems.append(problem)
    if problems:
        return f"{count} LLM task(s) of agents {names} cannot reach their model: {'; '.join(problems)}"
    return None


def environment_problem(settings: LlmSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """What the environment lacks for `settings` (the key's variable, a model), or None."""
    if settings.api_key_env is not None and not environ.get(settings.api_key_env):
        return (
            f"the environment variable {settings.api_key_env} (llm.api_key_env) that should hold "
            f"the {settings.provider} API key is not set"
        )
    if settings.model is None and not environ.get(MODEL_ENV):
        return f"no model is named: set llm.model, the environment variable {MODEL_ENV} or --llm-model"
    return None
