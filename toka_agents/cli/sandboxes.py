"""The sandbox verbs: `toka sandbox build|check|clean`, `toka runtime exec` and `toka workspace
get|rm`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

from cyclopts import Parameter, validators

from toka_agents import text
from toka_agents.cli.app import (
    err,
    out,
    runtime_app,
    sandbox_app,
    workspace_app,
)
from toka_agents.config.limits import format_bytes
from toka_agents.config.models import DEFAULT_IMAGE
from toka_agents.errors import TokaError
from toka_agents.sandbox import (
    LABEL_MANAGED,
    connect,
    image_status,
    remove_labeled,
    remove_orphans,
)
from toka_agents.sandbox.egress import remove_networks
from toka_agents.sandbox.images import build_images, build_mcp_image
from toka_agents.sandbox.owners import LABEL_RUN


@workspace_app.command(name="get")
def workspace_get(flow_run_id: UUID, destination: Path, /) -> int:
    """Copy a run's workspace into DESTINATION (made if missing), e.g.
    `toka workspace get 0b6e...-... ./out`: from the archive the run left in Prefect's result
    storage, or else from its workspace volume on the engine DOCKER_HOST names."""
    from toka_agents.orchestration.archives import fetch_workspace
    from toka_agents.sandbox.workspace import copy_out

    fetched = fetch_workspace(str(flow_run_id), destination)
    where = "the result storage"
    if fetched is None:
        try:
            fetched = copy_out(connect(), str(flow_run_id), destination)
        except TokaError as exc:
            raise TokaError(
                f"no archive of run {flow_run_id} in the result storage, and {exc}"
            ) from None
        where = "its workspace volume"
    copied, left_out = fetched
    if left_out:
        err.print(f"warning: {text.visible(left_out.warning(destination))}", markup=False)
    out.print(
        f"copied {len(copied)} path(s) of run {flow_run_id}'s workspace from {where} to "
        + text.visible(str(destination)),
        markup=False,
    )
    return 0


@workspace_app.command(name="rm")
def workspace_rm(flow_run_id: UUID, /) -> int:
    """Remove a run's workspace volume from the engine DOCKER_HOST names.

    For example:

        toka workspace rm 0b8e5c3e-6a43-4c1e-9f7a-2d5d1f0c9a11
    """
    from toka_agents.sandbox.workspace import remove_volume

    out.print(f"removed volume {remove_volume(connect(), str(flow_run_id))}", markup=False)
    return 0


@sandbox_app.command
def build(
    *,
    force: Annotated[
        bool, Parameter(negative="", help="Rebuild even when the image is current.")
    ] = False,
    mcp: Annotated[
        str | None,
        Parameter(
            help="Build instead an image with this MCP server package installed "
            "(PACKAGE[==VERSION], from the package index of this machine's pip), for "
            "`image:` of an `mcp_servers` entry."
        ),
    ] = None,
    name: Annotated[
        str | None, Parameter(help="With --mcp: the image's name (default toka-mcp-PACKAGE:1).")
    ] = None,
    deb: Annotated[
        tuple[str, ...],
        Parameter(
            negative_iterable="",
            help="With --mcp: a Debian package the server needs besides Python's (repeatable), "
            "such as git for mcp-server-git.",
        ),
    ] = (),
) -> int:
    """Build the sandbox images (Python and shell): from a registry when one answers, otherwise
    offline from Debian. With --mcp, an image for an MCP server.

    For example:

        toka sandbox build --mcp mcp-server-time==2026.10.19

        toka sandbox build --mcp mcp-server-git==2026.10.19 --deb git
    """

    def log(line: str) -> None:
        out.print(text.visible(line), markup=False)

    if mcp is not None:
        build_mcp_image(connect(), mcp, name, debs=deb, log=log)
        return 0
    if name is not None or deb:
        raise TokaError(f"{'--name' if name is not None else '--deb'} goes with --mcp")
    build_images(connect(), force=force, log=log)
    return 0


@sandbox_app.command
def check() -> int:
    """Say whether the Docker engine answers and the sandbox image is current; exit 1 when it
    is not (`toka sandbox build` makes it so).

    For example:

        toka sandbox check
    """
    client = connect()
    version = client.version().get("Version", "?")
    status = image_status(client)
    out.print(f"Docker engine {version}: image {DEFAULT_IMAGE} is {status}", markup=False)
    return 0 if status == "current" else 1


@sandbox_app.command
def clean(
    *,
    run: Annotated[
        UUID | None,
        Parameter(help="Remove the containers of this flow run (its id), whoever owns them."),
    ] = None,
    all: Annotated[
        bool, Parameter(negative="", help="Remove every toka-agents container, running runs' too.")
    ] = False,
) -> int:
    """Remove the sandbox containers that toka-agents processes left when they were killed.

    A run removes its own containers whatever happens to it, and the next run on this host
    removes those of killed processes; this does it now. `--run` removes one run's containers
    only, `--all` every toka-agents container on the engine. For example:

        toka sandbox clean

        toka sandbox clean --run 0b8e5c3e-6a43-4c1e-9f7a-2d5d1f0c9a11
    """
    if run is not None and all:
        err.print("error: give --run or --all, not both", markup=False)
        return 1
    client = connect()
    if run is not None or all:
        labels = {LABEL_MANAGED: "1", **({LABEL_RUN: str(run)} if run is not None else {})}
        removed = remove_labeled(client, labels)
        remove_networks(client, labels)  # egress networks, once their containers are gone
    else:
        removed = len(remove_orphans(client))
    out.print(f"removed {removed} container(s)", markup=False)
    return 0


EXEC_USAGE_ERROR = 2
EXEC_SANDBOX_ERROR = 125  # as `docker run` when the engine fails it
EXEC_TIMEOUT = 124  # as `timeout(1)`
EXEC_MEMORY_KILL = 137  # 128 + SIGKILL, as a shell reports an OOM-killed process


@runtime_app.command(name="exec")
def runtime_exec(
    *,
    language: Annotated[Literal["python", "shell"], Parameter(help="The code's language.")],
    code: Annotated[str | None, Parameter(help="The code to run.")] = None,
    file: Annotated[Path | None, Parameter(help="A file holding the code to run.")] = None,
    memory: Annotated[str, Parameter(help="Memory limit, swap off: 64MB, 1GB, ...")] = "64MB",
    cpu: Annotated[str, Parameter(help="CPU share: 50%, 0.5 or '2 cores'.")] = "50%",
    timeout: Annotated[str, Parameter(help="Wall-clock limit: 10s, 2m, ...")] = "10s",
    pids: Annotated[
        int, Parameter(help="Most processes and threads at once.", validator=validators.Number(gte=1))
    ] = 64,
    network: Annotated[
        bool, Parameter(negative="", help="Join Docker's bridge network (otherwise: no network at all).")
    ] = False,
    image: Annotated[str, Parameter(help="The sandbox image (it needs python3).")] = DEFAULT_IMAGE,
) -> int:
    """Run code in a sandbox container with these limits; print its output as it comes, then
    what it used (on stderr). Exits with the code's status, 124 on a timeout, 137 on a memory
    kill, 125 when the sandbox itself fails, 2 on a bad argument. For example:

        toka runtime exec --language python --code "print(6 * 7)" --memory 32MB --timeout 5s
    """
    from toka_agents.config.limits import format_seconds
    from toka_agents.errors import ConfigError, SandboxError
    from toka_agents.executor import standalone_spec
    from toka_agents.sandbox import Sandbox

    if (code is None) == (file is None):
        err.print("error: give the code with --code SRC or --file PATH, one of them", markup=False)
        return EXEC_USAGE_ERROR
    if file is not None:
        try:
            code = file.read_text()
        except OSError as exc:
            err.print(f"error: cannot read --file {file}: {exc.strerror or exc}", markup=False)
            return EXEC_USAGE_ERROR
        except UnicodeDecodeError:
            err.print(f"error: cannot read --file {file}: it is not UTF-8 text", markup=False)
            return EXEC_USAGE_ERROR
    assert code is not None
    try:
        spec = standalone_spec(
            language,
            code,
            memory=memory,
            cpu=cpu,
            timeout=timeout,
            pids=pids,
            network=network,
            image=image,
        )
    except ConfigError as exc:
        for issue in exc.issues:  # `limits.memory: ...` is the --memory given
            flag = issue.path.removeprefix("limits.")
            err.print(f"error: --{flag}: {text.visible(issue.message)}", markup=False)
        return EXEC_USAGE_ERROR

    def pass_on(stream: str, data: bytes) -> None:
        sink = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        sink.write(data)
        sink.flush()

    try:
        with Sandbox(connect(), {"org.toka-agents.runtime": "exec"}) as sandbox:
            result = sandbox.run(spec, on_output=pass_on)
    except SandboxError as exc:
        err.print(f"error: {text.visible(str(exc))}", markup=False)
        return EXEC_SANDBOX_ERROR
    # The code's own output passed through raw above, as `docker run` does: the user ran it.
    # What toka-agents says about it is shown literally.
    if result.failure:
        err.print(text.visible(result.failure), markup=False)
    cut = [name for name in ("stdout", "stderr") if getattr(result, f"{name}_truncated")]
    err.print(
        f"exit code {result.exit_code} · wall {format_seconds(round(result.duration, 3))} · "
        f"cpu {format_seconds(result.cpu_seconds)} · peak memory {format_bytes(result.peak_memory)} "
        f"of {format_bytes(result.memory_limit)} · stdout {format_bytes(result.stdout_bytes)}, "
        f"stderr {format_bytes(result.stderr_bytes)}"
        + (f" ({' and '.join(cut)} cut at {format_bytes(result.output_limit)})" if cut else ""),
        markup=False,
    )
    if result.timed_out:
        return EXEC_TIMEOUT
    if result.oom_killed:
        return EXEC_MEMORY_KILL
    if result.error is not None or result.exit_code is None:
        return EXEC_SANDBOX_ERROR
    return result.exit_code
