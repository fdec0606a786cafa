"""The `toka` command: one module per verb group (configs, orchestrating, agents, sandboxes),
their shared frame (`app`) and how they show things (`rendering`). The verbs call library
functions and hold no logic of their own."""

from __future__ import annotations

import os
import sys

from toka_agents import text
from toka_agents.cli import agents, configs, orchestrating, sandboxes  # noqa: F401 (their verbs)
from toka_agents.cli.app import app, err
from toka_agents.cli.rendering import (
    agents_table,
    print_issues,
    print_plan,
    print_run,
    print_warnings,
    print_where,
    show_log_lines_literally,
    summary_table,
)
from toka_agents.errors import ConfigError, TokaError

__all__ = [
    "agents_table",
    "app",
    "main",
    "print_issues",
    "print_plan",
    "print_run",
    "print_warnings",
    "print_where",
    "summary_table",
]


WITHOUT_PREFECT = frozenset(
    {
        "validate",
        "plan",
        "graph",
        "schema",
        "sandbox",
        "runtime",
        "workspace",
        "--help",
        "-h",
        "--version",
    }
)
"""The verbs (and flags) that never load Prefect: they answer in half a second rather than three."""


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded server's first start makes its database: on a busy machine that took more
    # than Prefect's 20 s, and the run failed before it began. Read when Prefect loads.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if sys.argv[1:2] and sys.argv[1] not in WITHOUT_PREFECT:
        show_log_lines_literally()  # loads Prefect, whose console handler it wraps
    try:
        app()
    except ConfigError as exc:
        print_issues(exc.issues)
        sys.exit(1)
    except TokaError as exc:
        err.print(f"error: {text.visible(str(exc))}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except BrokenPipeError:  # what read the output went away (`| head -1`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the last flush too
        sys.exit(1)
