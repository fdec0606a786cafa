"""Modules an agent's code leaves in the workspace (`json.py`, `contextlib.py`, ...) never run
as part of the sandbox's own processes: the supervisor (root, PID 1 of every container), the
session's Python kernel, or a stdio MCP server started in the workspace. Each is a process that
starts with the workspace as its working directory; a later task's results, env and tools
must not be theirs to change. The calls' own code still imports its own modules from the
workspace. Real Docker engine; the MCP server is the reference `mcp-server-time`.

Seen to fail without what it tests: with the supervisor started without `-I`, the single-use
call's modules were imported by PID 1 as root; with the kernel's path left as it starts, the
kernel imported `contextlib` and `traceback` from the workspace, and with it put back first
after the kernel's imports, printing a traceback imported the workspace's `ast`; without `PYTHONSAFEPATH` in
the server's env, the time server imported the workspace's `json`.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import pytest
from own_runs import TEST_LABEL, THIS_SESSION

from toka_agents.config.mcp import McpServer
from toka_agents.llm.mcp import McpServers
from toka_agents.sandbox import Sandbox
from toka_agents.tool_servers import server_spec

pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_containers")

PLANTED = (
    "ast",
    "contextlib",
    "fcntl",
    "json",
    "linecache",
    "select",
    "selectors",
    "signal",
    "struct",
    "subprocess",
    "traceback",
)
"""The standard modules the supervisor and the kernel import, and the MCP server's `json`."""

MODULE = textwrap.dedent(
    """
    import os, sys
    try:  # leave a mark: which module ran, as whom, in which process
        with open(f"/workspace/marks/{__name__}-{os.getpid()}", "w") as mark:
            mark.write(f"uid {os.getuid()}: {sys.argv!r}")
    except OSError:
        pass
    # Then become the real module, so that nothing else shows it ran.
    _path = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if entry not in ("", ".", "/workspace")]
    del sys.modules[__name__]
    import importlib
    sys.modules[__name__] = importlib.import_module(__name__)
    sys.path[:] = _path
    """
)


def plant(workspace: Path) -> Path:
    """The planted modules, and the directory where any of them that runs leaves its mark."""
    marks = workspace / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # root without DAC_OVERRIDE (the supervisor) can write there too
    for name in PLANTED:
        (workspace / f"{name}.py").write_text(MODULE)
    (workspace / "helper.py").write_text("GREETING = 'hello from the workspace'\n")
    return marks


def ran(marks: Path) -> dict[str, str]:
    return {mark.name: mark.read_text() for mark in marks.iterdir()}


@pytest.fixture
def sandbox(docker_client):
    with Sandbox(docker_client, {TEST_LABEL: THIS_SESSION}) as sandbox:
        yield sandbox


def test_the_supervisor_and_the_kernel_never_import_from_the_workspace(spec, sandbox):
    template = spec("")
    assert template.workspace is not None
    marks = plant(template.workspace)
    single = sandbox.run(template.model_copy(update={"source": "import sys\nsys.exit(7)"}))
    with sandbox.session(template) as session:
        calls = [
            session.run(template.model_copy(update={"source": source, "language": language}))
            for language, source in [
                ("python", "kept = 1"),
                ("python", "import sys\nsys.exit(7)"),
                ("python", "1 / 0"),
                ("shell", "exit 5"),
                ("python", "import helper\nprint(helper.GREETING, kept)"),
            ]
        ]
    assert ran(marks) == {}
    assert single.exit_code == 7
    assert [call.exit_code for call in calls] == [0, 7, 1, 5, 0]
    assert "ZeroDivisionError" in calls[2].stderr
    # The calls' own code imports its own modules from the workspace.
    assert calls[4].stdout == "hello from the workspace 1\n"


def test_a_stdio_mcp_server_never_imports_from_the_workspace(spec, sandbox, time_image):
    template = spec("", memory=256 * 1024**2, timeout=60)
    assert template.workspace is not None
    marks = plant(template.workspace)
    server = McpServer(name="time", command=["python3", "-m", "mcp_server_time"], image=time_image)
    with McpServers() as servers:
        launch = functools.partial(
            sandbox.process, server_spec(template, server), list(server.command or [])
        )
        servers.start("time", launch, timeout=60)
        said, failed = servers.call("time__get_current_time", {"timezone": "UTC"})
    assert ran(marks) == {}
    assert not failed and '"timezone": "UTC"' in said
