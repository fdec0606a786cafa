"""The capability model: what each capability name lets an agent's sandbox do.

Only two capabilities change the container: network ones give it a network, write ones
mount the workspace read-write. Every other known name is recorded on the task and checked
by the tools that need it. Names the model does not know are kept and reported as warnings.
"""

from __future__ import annotations

from collections.abc import Iterable

NETWORK = frozenset(
    {
        "network",
        "network-access",
        "network-access-llm-providers",
        "github-api-access",
        "api-access",
        "web-access",
    }
)
WORKSPACE_WRITE = frozenset({"filesystem-write", "file-system-write"})


def grants_network(capabilities: Iterable[str]) -> bool:
    return any(name in NETWORK for name in capabilities)


def grants_workspace_write(capabilities: Iterable[str]) -> bool:
    return any(name in WORKSPACE_WRITE for name in capabilities)
