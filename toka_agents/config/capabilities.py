"""The capability model: what each capability name lets an agent's sandbox do.

Agents name capabilities in `capabilities:` (native), `security.capabilities_required` and
`capabilities.primary/secondary` (Toka). Every name falls into one of these groups:

| group            | effect on the sandbox                                                 |
|------------------|-----------------------------------------------------------------------|
| network          | the container joins a network (without one it has only `lo`)          |
| limited network  | egress only to the agent's `network_allow` hosts, through a proxy     |
| workspace-write  | /workspace is mounted read-write (otherwise read-only)                |
| recorded         | no container effect: kept on the task for the tools that check it     |
| never granted    | no sandbox ever gets it; the name is kept and a warning says so       |
| unknown          | kept on the task, grants nothing, and listed in a warning             |

`network-access-limited`, and any agent's `network_allow: [host, host:port, ...]`, give a
limited network: the container sits on an internal Docker network with no way out but the
run's egress proxy (`sandbox.egress`), which lets through only the listed hosts and refuses
every other destination; DNS is refused. `network-access-limited` with no `network_allow`
lists nothing, so it gives no network at all. A `network_allow` list limits an agent that
also holds a full network capability: the list is the narrower grant.
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
LIMITED_NETWORK = frozenset({"network-access-limited"})
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
NetworkAccess = Literal["none", "limited", "full"]


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


def network_access(capabilities: Iterable[str], allow: Iterable[str] = ()) -> NetworkAccess:
    """What network a sandbox gets: `limited` (the `allow` hosts only, through the egress
    proxy) whenever `allow` lists a host, else `full` for a network capability other than
    `network-access-limited`, else `none` (only `lo`)."""
    if any(True for _ in allow):
        return "limited"
    if any(name in NETWORK - LIMITED_NETWORK for name in capabilities):
        return "full"
    return "none"


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
