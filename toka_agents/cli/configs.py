"""The config verbs: `toka validate`, `plan`, `graph` and `schema`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from toka_agents import graphs, planning, text
from toka_agents.cli.app import (
    AllowUnsandboxed,
    Conditions,
    ConfigPath,
    InputPairs,
    InputsFile,
    OptionalDependencies,
    app,
    err,
    given_inputs,
    out,
)
from toka_agents.cli.rendering import (
    print_inputs,
    print_issues,
    print_plan,
    print_warnings,
)
from toka_agents.config.models import OrchestrationFile
from toka_agents.planning import OptionalMode


@app.command
def validate(
    *paths: ConfigPath,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
    allow_unsandboxed: AllowUnsandboxed = False,
) -> int:
    """Check configs: print every problem as `FILE: key.path: message`; exit 1 if there are any.

    Warnings (Toka schema departures, capabilities the model does not know) never fail.
    Required inputs need no value here; `toka plan --input ...` checks values. For example:

        toka validate flows/examples/quickstart.yaml

        toka validate tests/data/toka-specs/v0.3
    """
    checked = planning.validate(
        paths,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        allow_unsandboxed=allow_unsandboxed or None,
        require_inputs=False,
    )
    print_warnings(checked, all_of_them=True)
    if not checked.ok:
        print_issues(checked.issues)
        err.print(f"{len(checked.issues)} problem(s) found", markup=False)
        return 1
    assert checked.plan is not None
    plan = checked.plan
    out.print(
        f"ok: {text.visible(plan.name, newlines=False)}: {len(plan.agents)} agents, "
        f"{len(plan.tasks)} tasks, {len(plan.waves)} waves",
        markup=False,
    )
    return 0


@app.command
def plan(
    *paths: ConfigPath,
    json_: Annotated[
        bool, Parameter(name="--json", negative="", help="Print the plan as JSON.")
    ] = False,
    input_: InputPairs = (),
    inputs_file: InputsFile = None,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
    allow_unsandboxed: AllowUnsandboxed = False,
) -> int:
    """Show the plan: agents in waves, their tasks and settings, the dependency edges, and
    the config's inputs with the values used (instructions filled with them).

    For example:

        toka plan flows/examples/inputs.yaml --input topic="solar power"

        toka plan flows/examples/quickstart.yaml --json
    """
    checked = planning.validate(
        paths,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        allow_unsandboxed=allow_unsandboxed or None,
        inputs=given_inputs(input_, inputs_file),
    )
    print_warnings(checked)
    if checked.plan is None:
        print_issues(checked.issues)
        return 1
    if json_:
        print(json.dumps(checked.plan.to_json(), indent=2))
        return 0
    print_plan(checked.plan, out)
    print_inputs(checked.plan, out)
    return 0


def plan_to_show(
    paths: Sequence[Path], conditions: Sequence[str], optional_dependencies: OptionalMode | None
) -> planning.Plan | None:
    """The configs' plan, to show rather than run (required inputs may lack values), or None
    once every problem is printed."""
    checked = planning.validate(
        paths,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        require_inputs=False,
    )
    if checked.plan is None:
        print_issues(checked.issues)
    return checked.plan


@app.command
def graph(
    *paths: ConfigPath,
    format: Annotated[
        Literal["mermaid", "dot", "svg", "png"], Parameter(help="What to draw.")
    ] = "mermaid",
    output: Annotated[Path | None, Parameter(help="Write here instead of standard output.")] = None,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
) -> int:
    """Draw the DAG: Mermaid or Graphviz DOT text, or an SVG/PNG image rendered by Graphviz.

    For example:

        toka graph flows/examples/quickstart.yaml

        toka graph flows/examples/quickstart.yaml --format svg --output dag.svg
    """
    planned = plan_to_show(paths, conditions, optional_dependencies)
    if planned is None:
        return 1
    if format in ("svg", "png"):
        data = graphs.render(planned, format)
        if output is None and format == "png" and sys.stdout.isatty():
            err.print(
                "error: refusing to write PNG bytes to a terminal: use --output FILE", markup=False
            )
            return 1
    else:
        data = (graphs.mermaid if format == "mermaid" else graphs.dot)(planned).encode()
    if output is None:
        if sys.stdout.isatty() and format in ("mermaid", "dot"):
            data = text.visible(data.decode()).encode()  # the configs' names, on a terminal
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        err.print(f"wrote {output} ({len(data)} bytes)", markup=False)
    return 0


@app.command
def schema() -> int:
    """Print the JSON Schema of the native config format, for editors.

    For example:

        toka schema > toka-agents.schema.json
    """
    print(json.dumps(OrchestrationFile.model_json_schema(mode="validation"), indent=2))
    return 0
