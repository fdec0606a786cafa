"""The dependency graph's algorithms: requirements that name no agent, cycles (each named in
full, found without recursion), optional edges that may order agents without closing a cycle,
and the waves (topological layers, priority order inside a layer)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from toka_agents.config.models import PRIORITY_RANK, Agent
from toka_agents.errors import ConfigIssue


def graph_issues(agents: Sequence[Agent], also_known: Collection[str] = ()) -> list[ConfigIssue]:
    """Unknown required agents and cycles, each located at the `requires` that causes it.

    `also_known` names agents that exist but failed validation: requiring them is not an error.
    """
    names = {agent.name for agent in agents}
    issues: list[ConfigIssue] = []
    for agent in agents:
        for i, needed in enumerate(agent.requires):
            if needed not in names and needed not in also_known:
                known = ", ".join(sorted(names)) or "none"
                issues.append(
                    ConfigIssue(
                        agent.origin.file,
                        agent.origin.requirement_key(i),
                        f"agent {agent.name!r} requires {needed!r}, which is not defined "
                        f"(defined agents: {known})",
                    )
                )
    by_name = {agent.name: agent for agent in agents}
    graph = {agent.name: [n for n in agent.requires if n in names] for agent in agents}
    for cycle in find_cycles(graph):
        first = by_name[cycle[0]]
        shown = " -> ".join([*cycle, cycle[0]])
        issues.append(
            ConfigIssue(
                first.origin.file,
                first.origin.key(first.origin.requires_key),
                f"dependency cycle: {shown} (each agent requires the next)",
            )
        )
    return issues


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, in walking order.

    Iterative Tarjan, so that 10,000-agent chains do not hit the recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
    position = {name: i for i, name in enumerate(graph)}
    return [_walk_cycle(graph, set(c), min(c, key=position.__getitem__)) for c in components]


def _walk_cycle(graph: dict[str, list[str]], members: set[str], start: str) -> list[str]:
    """A path inside one strongly connected component from `start` back to `start`."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if child in members and child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return [start]


def acyclic_subset(
    optional: Iterable[tuple[str, str]], required: Iterable[tuple[str, str]], warnings: list[str]
) -> list[tuple[str, str]]:
    """Optional edges that can order agents without closing a cycle; the others are warned about."""
    after: dict[str, set[str]] = {}
    for before, later in required:
        after.setdefault(before, set()).add(later)
    kept = []
    for before, later in optional:
        path = _path(after, later, before)
        if path is not None:
            loop = " -> ".join([before, *path])
            warnings.append(
                f"optional dependency of {later!r} on {before!r} does not order them: "
                f"it would close the cycle {loop}"
            )
            continue
        after.setdefault(before, set()).add(later)
        kept.append((before, later))
    return kept


def _path(after: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path start -> ... -> goal along `after`, or None."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            if node == goal:
                path: list[str] = []
                step: str | None = node
                while step is not None:
                    path.append(step)
                    step = parents[step]
                return path[::-1]
            for child in sorted(after.get(node, ())):
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return None


def waves_of(
    agents: dict[str, Agent], edges: Iterable[tuple[str, str]], order: dict[str, int]
) -> list[list[str]]:
    waiting = {name: 0 for name in agents}
    dependents: dict[str, list[str]] = {name: [] for name in agents}
    for before, later in set(edges):
        waiting[later] += 1
        dependents[before].append(later)

    def rank(name: str) -> tuple[int, int]:
        return PRIORITY_RANK[agents[name].priority], order[name]

    wave = sorted((name for name, count in waiting.items() if count == 0), key=rank)
    waves = []
    while wave:
        waves.append(wave)
        following = []
        for name in wave:
            for later in dependents[name]:
                waiting[later] -= 1
                if waiting[later] == 0:
                    following.append(later)
        wave = sorted(following, key=rank)
    return waves
