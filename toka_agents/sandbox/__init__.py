"""Sandbox: runs code in Docker containers under the limits the plan fixed, measures what it
used, and removes every container it made. It knows nothing of Prefect.
"""

from toka_agents.sandbox.cleanup import LABEL_MANAGED, remove_labeled, remove_orphans
from toka_agents.sandbox.containers import AttachedProcess, Sandbox, SandboxCancelled
from toka_agents.sandbox.engine import connect
from toka_agents.sandbox.images import build_image, image_status
from toka_agents.sandbox.pool import WarmPool, pool_key
from toka_agents.sandbox.spec import SandboxResult, SandboxSpec
from toka_agents.sandbox.workspace import create_workspace

__all__ = [
    "LABEL_MANAGED",
    "AttachedProcess",
    "Sandbox",
    "SandboxCancelled",
    "SandboxResult",
    "SandboxSpec",
    "WarmPool",
    "build_image",
    "connect",
    "create_workspace",
    "image_status",
    "pool_key",
    "remove_labeled",
    "remove_orphans",
]
