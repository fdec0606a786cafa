"""Pictures of a plan's DAG: Mermaid and Graphviz DOT text, and SVG/PNG rendered by Graphviz.

Required dependencies are solid arrows from the required agent to the one requiring it;
optional ones are dashed. Agents are grouped by wave, each labelled with its priority.
"""

from __future__ import annotations

import re
from typing import Literal

from toka_agents.errors import TokaError
from toka_agents.planning import Plan, PlannedAgent

TextFormat = Literal["mermaid", "dot"]
ImageFormat = Literal["svg", "png"]


def mermaid(plan: Plan) -> str:
    ids = {agent.name: f"a{i}" for i, agent in enumerate(plan.agents)}
    lines = ["flowchart LR"]
    for number, wave in _numbered_waves(plan):
        lines.append(f"  subgraph wave{number}[wave {number}]")
        for agent in wave:
            label = _mermaid_text(_label(agent, "<br/>"))
            lines.append(f'    {ids[agent.name]}["{label}"]')
        lines.append("  end")
    lines += [f"  {ids[before]} --> {ids[later]}" for before, later in plan.edges]
    lines += [f"  {ids[before]} -.-> {ids[later]}" for before, later in plan.optional_edges]
    return "\n".join(lines) + "\n"


def dot(plan: Plan) -> str:
    lines = [
        f"digraph {_dot_id(plan.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef2ff", fontname="Helvetica"];',
    ]
    for number, wave in _numbered_waves(plan):
        lines.append(f"  subgraph cluster_wave{number} {{")
        lines.append(f'    label="wave {number}"; style=dashed; color="#9ca3af";')
        for agent in wave:
            label = _dot_id(_label(agent, "\\n"))
            lines.append(f"    {_dot_id(agent.name)} [label={label}];")
        lines.append("  }")
    lines += [f"  {_dot_id(before)} -> {_dot_id(later)};" for before, later in plan.edges]
    lines += [
        f'  {_dot_id(before)} -> {_dot_id(later)} [style=dashed, color="#6b7280"];'
        for before, later in plan.optional_edges
    ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(plan: Plan, image: ImageFormat) -> bytes:
    """The DOT graph rendered by Graphviz's `dot` program."""
    import graphviz

    try:
        return graphviz.Source(dot(plan)).pipe(format=image)
    except graphviz.ExecutableNotFound as exc:
        raise TokaError(
            "rendering needs Graphviz's `dot` program: install the graphviz package "
            "(scripts/setup does), or use --format dot or mermaid"
        ) from exc


def _numbered_waves(plan: Plan) -> list[tuple[int, list[PlannedAgent]]]:
    agents = {agent.name: agent for agent in plan.agents}
    return [(number, [agents[name] for name in wave]) for number, wave in enumerate(plan.waves, 1)]


def _label(agent: PlannedAgent, line_break: str) -> str:
    return f"{agent.name}{line_break}{agent.priority} · {len(agent.tasks)} tasks"


def _dot_id(text: str) -> str:
    """A DOT quoted string: names and labels alike."""
    return '"' + text.replace('"', '\\"') + '"'


def _mermaid_text(text: str) -> str:
    return re.sub(r'["]', "'", text)
