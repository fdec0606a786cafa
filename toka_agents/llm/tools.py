"""The tools an LLM agent works with, and the toolbox that runs its calls.

`run_code(language, source)` runs code in the agent's sandbox. `list_files`, `read_file` and
`write_file` (offered only to agents that may write the workspace) are themselves small Python
programs run in that same sandbox, so they see exactly what the agent's code sees, on any
engine, and never touch the worker's disk. `finish(success, summary)` ends the task with the
model's verdict.

Paths stay under /workspace: `..`, absolute paths elsewhere and symlinks that point out are
refused with a tool error the model reads (checked before any container starts, and again
inside the container, where the symlinks are).
"""

from __future__ import annotations

import json
import posixpath
import secrets
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from toka_agents.errors import Rejected
from toka_agents.llm.messages import ToolCall, ToolMessage, ToolSpec
from toka_agents.sandbox import Sandbox, SandboxResult, SandboxSpec

if TYPE_CHECKING:  # the MCP SDK loads only for a task that has servers
    from toka_agents.llm.mcp import McpServers

WORKSPACE = "/workspace"
OUTPUT_SHOWN = 8_000
"""Characters of each of stdout and stderr the model reads of a `run_code` (the end of them)."""
READ_LIMIT = 100_000
"""Characters of a file `read_file` gives the model."""
LIST_LIMIT = 500
"""Entries `list_files` lists."""

FILE_TOOLS = ("list_files", "read_file", "write_file")
Language = Literal["python", "shell"]
RunCode = Callable[[str, str], SandboxResult]
"""Runs `source` in `language` in the agent's sandbox, as a code task would."""
AskPerson = Callable[[str], str]
"""Asks a person `question` and returns their answer; raises `NoAnswer` when none comes in time."""
Approve = Callable[[ToolCall], None]
"""Holds a tool call until a person approves it; raises `Rejected` (the call is not run) or
`NoAnswer` when no decision comes in time."""


def _arguments(**properties: dict[str, Any]) -> dict[str, Any]:
    """A tool's input schema: an object of `properties`, each required unless it has a
    default, and no others."""
    required = [name for name, schema in properties.items() if "default" not in schema]
    return {
        "type": "object",
        "properties": properties,
        **({"required": required} if required else {}),
        "additionalProperties": False,
    }


RUN_CODE = ToolSpec(
    name="run_code",
    description=(
        "Run a Python 3 program or a POSIX shell script in your sandbox: a fresh container with "
        "your limits, whose working directory is the shared workspace /workspace. Returns the "
        "exit code, stdout and stderr. Nothing but /workspace survives between runs."
    ),
    parameters=_arguments(
        language={"type": "string", "enum": ["python", "shell"]},
        source={"type": "string", "description": "The whole program."},
    ),
)
RUN_CODE_IN_SESSION = RUN_CODE.model_copy(
    update={
        "description": (
            "Run a Python 3 program or a POSIX shell script in your sandbox: one container kept "
            "for this task, with your limits, whose working directory is the shared workspace "
            "/workspace. Python calls share one interpreter, as cells of a notebook do: "
            "variables, imports and functions of one call are there in the next. /tmp persists "
            "for the task too. Returns the exit code, stdout and stderr."
        )
    }
)
_PATH = {"type": "string", "description": "A path in /workspace, relative to it or absolute."}
LIST_FILES = ToolSpec(
    name="list_files",
    description=f"List the files under a directory of /workspace and their sizes, {LIST_LIMIT} at most.",
    parameters=_arguments(path={**_PATH, "default": "."}),
)
READ_FILE = ToolSpec(
    name="read_file",
    description=f"Read a text file of /workspace (its first {READ_LIMIT} characters).",
    parameters=_arguments(path=_PATH),
)
WRITE_FILE = ToolSpec(
    name="write_file",
    description="Write a text file into /workspace, replacing it if it exists; makes its directories.",
    parameters=_arguments(path=_PATH, content={"type": "string"}),
)
FINISH = ToolSpec(
    name="finish",
    description=(
        "End the task. `success`: whether the task is done as asked. `summary`: what you did and "
        "found, for the agents that continue from your work. Nothing after it runs."
    ),
    parameters=_arguments(success={"type": "boolean"}, summary={"type": "string"}),
)
ASK_HUMAN = ToolSpec(
    name="ask_human",
    description=(
        "Ask a person a question and wait for their answer: for what you cannot find out "
        "yourself, or a decision that is theirs. Ask one clear question at a time."
    ),
    parameters=_arguments(question={"type": "string", "minLength": 1}),
)


def tool_specs(
    *,
    may_write: bool,
    may_ask: bool = False,
    served: Sequence[ToolSpec] = (),
    session: bool = False,
) -> list[ToolSpec]:
    """The tools of an agent; `write_file` only for one that may write the workspace,
    `ask_human` for one whose agent may ask a person, and its MCP servers' tools (`served`).
    `session`: its calls share one live container, and `run_code` says so."""
    optional = [*([WRITE_FILE] if may_write else []), *([ASK_HUMAN] if may_ask else [])]
    run_code = RUN_CODE_IN_SESSION if session else RUN_CODE
    return [run_code, LIST_FILES, READ_FILE, *optional, *served, FINISH]


class Verdict(BaseModel):
    """What the model said when it called `finish`."""

    success: bool
    summary: str


class ToolResult(BaseModel):
    """What a tool call gave back to the model; `verdict` when it was `finish`."""

    content: str
    is_error: bool = False
    verdict: Verdict | None = None

    def answering(self, call: ToolCall) -> ToolMessage:
        """This result as the conversation's answer to `call`."""
        return ToolMessage(
            tool_call_id=call.id, name=call.name, content=self.content, is_error=self.is_error
        )


@dataclass(eq=False)
class Toolbox:
    """Runs an agent's tool calls. `run_code` is its door to the sandbox."""

    run_code: RunCode
    _: KW_ONLY
    may_write: bool
    root: str = WORKSPACE
    ask: AskPerson | None = None
    approve: Approve | None = None
    held: frozenset[str] = frozenset()
    """The tools each of whose calls waits for `approve`."""
    servers: McpServers | None = None
    session: bool = False

    @cached_property
    def specs(self) -> list[ToolSpec]:
        """The tools offered to the model."""
        served = [tool.spec for tool in self.servers.tools.values()] if self.servers is not None else []
        return tool_specs(
            may_write=self.may_write, may_ask=self.ask is not None, served=served, session=self.session
        )

    def run(self, call: ToolCall) -> ToolResult:
        """Run one call whose name and arguments the gateway has checked against `specs`.

        A refusal or a failure of the tool is a result the model reads; only the sandbox's own
        errors (`SandboxError`, `SandboxCancelled`) and a question's `NoAnswer` propagate. A
        call of a held tool runs only once a person approves it; rejected, the model reads why.
        """
        args = call.arguments
        if call.name in FILE_TOOLS:  # refused before a person is asked to approve it
            refusal = self.path_refusal(args.get("path", "."))
            if refusal is not None:
                return ToolResult(content=refusal, is_error=True)
        if call.name in self.held and self.approve is not None:
            try:
                self.approve(call)
            except Rejected as exc:
                return ToolResult(content=str(exc), is_error=True)
        if call.name == "finish":
            verdict = Verdict(success=args["success"], summary=args["summary"])
            return ToolResult(content="The task is finished.", verdict=verdict)
        if call.name == "run_code":
            return _code_result(self.run_code(args["language"], args["source"]))
        if call.name == "ask_human" and self.ask is not None:
            return ToolResult(content=self.ask(args["question"]))
        if self.servers is not None and call.name in self.servers.tools:
            content, is_error = self.servers.call(call.name, args)
            return ToolResult(content=content, is_error=is_error)
        if call.name in ("list_files", "read_file") or (call.name == "write_file" and self.may_write):
            return self._file_tool(call.name, args)
        return ToolResult(content=f"there is no tool {call.name!r}", is_error=True)

    def path_refusal(self, path: str) -> str | None:
        """Why `path` is refused before any container starts, or None. Symlinks are checked in
        the container, where they are."""
        if "\0" in path:
            return f"{path!r} is not a path: it holds a NUL character"
        full = posixpath.normpath(posixpath.join(self.root, path))
        if full != self.root and not full.startswith(self.root + "/"):
            return f"{path!r} is outside {WORKSPACE}: the file tools see only {WORKSPACE}"
        return None

    def _file_tool(self, name: str, args: dict[str, Any]) -> ToolResult:
        result = self.run_code("shell", file_tool_script(name, args, self.root))
        if not result.ok:
            return ToolResult(content=f"{name} failed in the sandbox: {result.failure}", is_error=True)
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError:
            return ToolResult(content=f"{name} gave no answer: {result.stdout[-300:]!r}", is_error=True)
        if "error" in answer:
            return ToolResult(content=str(answer["error"]), is_error=True)
        return ToolResult(content=str(answer["content"]))


def sandbox_runner(sandbox: Sandbox, spec: SandboxSpec) -> RunCode:
    """`run_code` for a toolbox: each call runs in a new container set up like `spec`."""

    def run_code(language: str, source: str) -> SandboxResult:
        return sandbox.run(spec.model_copy(update={"language": language, "source": source}))

    return run_code


def _code_result(result: SandboxResult) -> ToolResult:
    failure = result.failure
    lines = [f"exit code {result.exit_code}" if failure is None else failure]
    if result.note:
        lines.insert(0, f"note: {result.note}")
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text:
            cut = len(text) - OUTPUT_SHOWN
            shown = text[-OUTPUT_SHOWN:] if cut > 0 else text
            lines.append(
                f"--- {name}" + (f" (its first {cut} characters cut)" if cut > 0 else "") + " ---"
            )
            lines.append(shown.rstrip("\n"))
    return ToolResult(content="\n".join(lines), is_error=failure is not None)


def file_tool_script(name: str, args: dict[str, Any], root: str = WORKSPACE) -> str:
    """The shell script that carries out one file tool call inside the sandbox: its Python
    program (`file_tool_source`) as a process of its own, so that it never runs in, or sees,
    the Python namespace a live session's calls share."""
    end = f"TOKA_FILE_TOOL_{secrets.token_hex(8)}"
    return f"exec python3 - <<'{end}'\n{file_tool_source(name, args, root)}\n{end}\n"


def file_tool_source(name: str, args: dict[str, Any], root: str = WORKSPACE) -> str:
    """The Python program that carries out one file tool call inside the sandbox."""
    request = json.dumps({"tool": name, "args": args, "root": root})
    return f"REQUEST = {request!r}\n{_FILE_TOOL}"


_FILE_TOOL = f"""
import json, os, sys

request = json.loads(REQUEST)
ROOT, TOOL, ARGS = os.path.realpath(request["root"]), request["tool"], request["args"]


def answer(**fields):
    print(json.dumps(fields))
    sys.exit(0)


def inside(path):
    full = os.path.realpath(os.path.join(ROOT, path))
    if full != ROOT and not full.startswith(ROOT + "/"):
        answer(error=f"{{path!r}} leads outside {WORKSPACE}: the file tools see only {WORKSPACE}")
    return full


def shown(full):
    return os.path.relpath(full, ROOT)


path = ARGS.get("path", ".")
full = inside(path)
if TOOL == "list_files":
    if not os.path.isdir(full):
        answer(error=f"{{path!r}} is not a directory")
    lines = []
    for directory, dirs, files in os.walk(full):
        dirs.sort()
        for entry in [*(d + "/" for d in dirs), *sorted(files)]:
            if len(lines) == {LIST_LIMIT}:
                lines.append(f"... (more than {LIST_LIMIT} entries)")
                answer(content="\\n".join(lines))
            item = os.path.join(directory, entry.rstrip("/"))
            name = shown(item) + ("/" if entry.endswith("/") else "")
            if os.path.islink(item):
                name += " -> " + os.readlink(item)
            elif not entry.endswith("/"):
                name += f"  ({{os.path.getsize(item)}} bytes)"
            lines.append(name)
    answer(content="\\n".join(lines) if lines else "(empty)")
if TOOL == "read_file":
    if not os.path.isfile(full):
        answer(error=f"{{path!r}} is not a file")
    with open(full, "rb") as handle:
        data = handle.read({READ_LIMIT} * 4 + 1).decode("utf-8", errors="replace")
    size = os.path.getsize(full)
    if len(data) > {READ_LIMIT}:
        data = data[:{READ_LIMIT}] + f"\\n... (cut: the file has {{size}} bytes)"
    answer(content=data)
if TOOL == "write_file":
    if os.path.isdir(full):
        answer(error=f"{{path!r}} is a directory")
    try:
        os.makedirs(os.path.dirname(full), exist_ok=True)
        full = inside(path)
        data = ARGS["content"].encode("utf-8")
        with open(full, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        answer(error=f"cannot write {{path!r}}: {{exc.strerror}}")
    answer(content=f"wrote {{len(data)}} bytes to {{shown(full)}}")
answer(error=f"no file tool {{TOOL!r}}")
"""
