"""The capability model: what each capability name lets an agent's sandbox do.

Agents name capabilities in `capabilities:` (native), `security.capabilities_required` and
`capabilities.primary/secondary` (Toka). Every name falls into one of these groups:

| group            | effect on the sandbox                                                 |
|------------------|-----------------------------------------------------------------------|
| network          | the container joins a network (without one it has only `lo`)          |
| workspace-write  | /workspace is mounted read-write (otherwise read-only)                |
| recorded         | no container effect: kept on the task for the tools that check it     |
| never granted    | no sandbox ever gets it; the name is kept and a warning says so       |
| unknown          | kept on the task, grants nothing, and listed in a warning             |

toka-agents has no partial network: `network-access-limited` gives the network too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

NETWORK = frozenset(
    {
        "network",
        "network-access",
        "network-access-limited",
        "network-access-llm-providers",
        "github-api-access",
        "http-requests",
    }
)
WORKSPACE_WRITE = frozenset({"filesystem-write", "file-system-write"})
RECORDED = frozenset(
    {
        # reading the workspace is always allowed; the names are kept for the record
        "filesystem-read",
        "file-system-read",
        # what Toka's specs ask of their tools
        "api-key-storage",
        "audit-access",
        "cargo-execution",
        "cargo-test-execution",
        "ci-integration",
        "command-execution",
        "credential-validation",
        "crypto-operations",
        "database-access",
        "document-analysis",
        "environment-variable-management",
        "event-bus-access",
        "git-access",
        "kernel-modification",
        "link-validation",
        "network-metrics",
        "performance-monitoring",
        "repository-administration",
        "script-execution",
        "secure-configuration",
        "security-modification",
        "storage-modification",
        "system-metrics",
        "workflow-management",
    }
)
NEVER_GRANTED = frozenset({"admin-privileges", "root", "privileged"})

Group = Literal["network", "workspace-write", "recorded", "never-granted", "unknown"]


def group_of(name: str) -> Group:
    if name in NETWORK:
        return "network"
    if name in WORKSPACE_WRITE:
        return "workspace-write"
    if name in RECORDED:
        return "recorded"
    if name in NEVER_GRANTED:
        return "never-granted"
    return "unknown"


def grants_network(capabilities: Iterable[str]) -> bool:
    return any(name in NETWORK for name in capabilities)


def grants_workspace_write(capabilities: Iterable[str]) -> bool:
    return any(name in WORKSPACE_WRITE for name in capabilities)


def warnings_for(agent: str, capabilities: Iterable[str]) -> list[str]:
    """One line per kind of capability the model does not grant, naming them all."""
    names = list(dict.fromkeys(capabilities))
    unknown = [name for name in names if group_of(name) == "unknown"]
    refused = [name for name in names if group_of(name) == "never-granted"]
    found = []
    if unknown:
        found.append(
            f"agent {agent!r}: {len(unknown)} capabilities are not in the capability model; "
            f"they are kept but grant nothing: {', '.join(unknown)}"
        )
    if refused:
        found.append(f"agent {agent!r}: never granted to a sandbox: {', '.join(refused)}")
    return found
