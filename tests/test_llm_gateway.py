"""The LLM gateway against the scripted server over real HTTP, for both providers: tool calls,
token counts, retries (429 with Retry-After, 5xx, lost connections; never a timed-out request), the retry bound,
malformed replies named by kind, the rate-limit hook, cancellation, and a key that never shows.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from llm_server import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    Call,
    RawBody,
    Reply,
    bad_arguments,
    malformed_json,
    rate_limited,
    scripted_server,
    server_error,
    slow,
    text,
    tool_call,
    tool_calls,
)
from test_llm_wire import RUN_CODE

from toka_agents.config.models import LlmSettings
from toka_agents.llm import (
    Gateway,
    LlmCancelled,
    LlmError,
    MalformedReply,
    ToolMessage,
    ToolSpec,
    UserMessage,
    api_key_from_env,
)

KEY = "sk-planted-4f9c1e7a2b"
PATHS = {"openai": OPENAI_PATH, "anthropic": ANTHROPIC_PATH}
FINISH = ToolSpec(
    name="finish",
    description="End the task.",
    parameters={
        "type": "object",
        "properties": {"success": {"type": "boolean"}, "summary": {"type": "string"}},
        "required": ["success", "summary"],
    },
)
TOOLS = [RUN_CODE, FINISH]
ASK = [UserMessage(content="Do the task.")]

pytestmark = pytest.mark.parametrize("provider", ["openai", "anthropic"])


def gateway(server, provider: str, *, acquire=None, cancel=None, **settings) -> Gateway:
    base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    return Gateway(
        LlmSettings(provider=provider, model="test-model", base_url=base_url, **settings),
        api_key=KEY,
        acquire=acquire,
        cancel=cancel,
    )


def sent(server, provider: str) -> int:
    return len(server.requests_to(PATHS[provider]))


def test_tool_calls_round_trip_with_token_counts(provider):
    script = (
        tool_calls(
            Call("run_code", {"language": "shell", "source": "ls"}),
            Call("finish", {"success": True, "summary": "ok"}),
        ),
        Reply(text="All done.", input_tokens=120, output_tokens=7),
    )
    with scripted_server(*script, api_key=KEY) as server, gateway(server, provider) as llm:
        first = llm.complete(ASK, TOOLS)
        assert [(c.name, c.arguments) for c in first.tool_calls] == [
            ("run_code", {"language": "shell", "source": "ls"}),
            ("finish", {"success": True, "summary": "ok"}),
        ]
        assert first.stop_reason == ("tool_calls" if provider == "openai" else "tool_use")
        assert first.model == "test-model" and first.input_tokens > 0 and first.output_tokens > 0
        results = [ToolMessage(tool_call_id=c.id, name=c.name, content="fine") for c in first.tool_calls]
        second = llm.complete([*ASK, first.as_message(), *results], TOOLS)
        assert (second.text, second.tool_calls, second.input_tokens, second.output_tokens) == (
            "All done.",
            (),
            120,
            7,
        )
        assert llm.usage.calls == 2
        assert llm.usage.input_tokens == first.input_tokens + 120
        assert llm.usage.output_tokens == first.output_tokens + 7
        assert sent(server, provider) == 2


@pytest.mark.parametrize(
    ("retry_after", "least", "most"),
    [
        (lambda: "1", 1.0, 1.0),
        (lambda: format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True), 0.001, 2.0),
    ],
    ids=["seconds", "http-date"],
)
def test_429_is_retried_after_what_retry_after_says(provider, retry_after, least, most):
    with scripted_server(rate_limited(retry_after()), text("after the wait"), api_key=KEY) as server:
        with gateway(server, provider) as llm:
            assert llm.complete(ASK, TOOLS).text == "after the wait"
        assert sent(server, provider) == 2
        (retry,) = llm.retries
        assert retry.status_code == 429 and "Rate limit reached for requests" in retry.reason
        assert retry.retry_after is not None and least <= retry.retry_after <= most
        assert retry.wait == retry.retry_after


def test_500_then_success_with_backoff(provider):
    with scripted_server(server_error(500), server_error(503), text("recovered"), api_key=KEY) as server:
        with gateway(server, provider) as llm:
            assert llm.complete(ASK, TOOLS).text == "recovered"
        assert sent(server, provider) == 3
        assert [(r.status_code, r.retry_after) for r in llm.retries] == [(500, None), (503, None)]
        assert all(r.wait > 0 for r in llm.retries)


def test_retry_bound_exhausted_fails_with_the_providers_reason(provider):
    script = [rate_limited("0", "Rate limit reached for gpt-test in organization org-1")] * 3
    with scripted_server(*script, text("never seen"), api_key=KEY) as server:
        with gateway(server, provider, max_retries=2) as llm, pytest.raises(LlmError) as caught:
            llm.complete(ASK, TOOLS)
        assert sent(server, provider) == 3
    message = str(caught.value)
    assert "failed after 3 attempt(s) (llm.max_retries 2)" in message
    assert "429 Too Many Requests: Rate limit reached for gpt-test in organization org-1" in message
    assert caught.value.status_code == 429 and not isinstance(caught.value, MalformedReply)


def test_a_refusal_is_not_retried_and_keeps_the_key_out(provider, caplog):
    caplog.set_level(logging.DEBUG)
    with scripted_server(text("never seen"), api_key="sk-the-real-one") as server:
        llm = gateway(server, provider)
        with llm, pytest.raises(LlmError) as caught:
            llm.complete(ASK, TOOLS)
        assert sent(server, provider) == 1
    # The server echoed the key it was given in its error; the gateway must not pass it on.
    assert caught.value.status_code == 401 and "refused the request: 401 Unauthorized" in str(
        caught.value
    )
    assert "[redacted]" in str(caught.value)
    for shown in (str(caught.value), repr(caught.value), repr(llm), repr(llm.settings), caplog.text):
        assert KEY not in shown


def test_a_timed_out_request_is_abandoned_and_not_sent_again(provider):
    """A server that goes on generating an abandoned answer (llama.cpp's does) would make a
    retry wait behind it: the call fails at the timeout, naming it, after one request."""
    with scripted_server(slow(10, text("too late")), text("in time"), api_key=KEY) as server:
        with gateway(server, provider, timeout="0.5s") as llm, pytest.raises(LlmError) as caught:
            llm.complete(ASK, TOOLS)
        assert sent(server, provider) == 1 and llm.retries == []
    assert str(caught.value).endswith(": no answer within 0.5s (llm.timeout); not retried")


def test_lost_connection_is_retried_then_fails_naming_it(provider, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:  # a port on 127.0.0.1 where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    settings = LlmSettings(provider=provider, model="m", base_url=base_url, max_retries=1)
    with Gateway(settings, api_key=KEY) as llm, pytest.raises(LlmError) as caught:
        llm.complete(ASK, TOOLS)
    assert "failed after 2 attempt(s)" in str(caught.value) and "connection failed" in str(caught.value)
    assert len(llm.retries) == 1 and "retry 1 of 1" in caplog.text
    assert KEY not in str(caught.value) and KEY not in caplog.text


@pytest.mark.parametrize(
    ("item", "kind", "named"),
    [
        (malformed_json(), "bad JSON", "is not JSON"),
        (RawBody('{"id": "x", "model": "m"}'), "missing field", "has no `usage`"),
        (
            tool_call("launch_rockets", target="moon"),
            "unknown tool",
            "'launch_rockets', which is no tool here",
        ),
        (bad_arguments("run_code"), "bad arguments", "arguments of tool call 'run_code'"),
        (
            tool_call("run_code", language="cobol", source="x"),
            "arguments off schema",
            "'cobol' is not one of",
        ),
        (tool_call("finish", success=True), "arguments off schema", "'summary' is a required property"),
    ],
)
def test_a_malformed_reply_is_named_and_not_retried(provider, item, kind, named):
    if provider == "anthropic" and kind == "bad arguments":
        item = bad_arguments("run_code", raw="not an object")
    with scripted_server(item, text("never seen"), api_key=KEY) as server:
        with gateway(server, provider) as llm, pytest.raises(MalformedReply) as caught:
            llm.complete(ASK, TOOLS)
        assert sent(server, provider) == 1
    assert caught.value.kind == kind
    assert str(caught.value).startswith(f"malformed reply ({kind}): ") and named in str(caught.value)
    if kind in ("unknown tool", "arguments off schema"):  # the call was answered: its tokens count
        assert caught.value.output_tokens > 0 and llm.usage.calls == 1


def test_the_rate_limit_hook_is_asked_before_every_request(provider):
    asked: list[tuple[int, int]] = []
    with scripted_server(server_error(502), text("ok"), api_key=KEY) as server:

        def acquire(tokens: int) -> None:
            asked.append((tokens, sent(server, provider)))

        with gateway(server, provider, acquire=acquire, max_tokens=300) as llm:
            llm.complete(ASK, TOOLS)
    # Once before each of the two requests, before the server saw it, with a bound above max_tokens.
    assert [seen for _, seen in asked] == [0, 1]
    assert all(tokens > 300 for tokens, _ in asked)


@pytest.mark.parametrize(
    "first", [rate_limited("60"), slow(60, text("far too late"))], ids=["retry-wait", "request"]
)
def test_cancel_ends_a_retry_wait_or_a_request_under_way(provider, first):
    cancel = threading.Event()
    with scripted_server(first, text("never seen"), api_key=KEY) as server:
        llm = gateway(server, provider, cancel=cancel, timeout="2m")
        threading.Thread(
            target=lambda: (_wait_for(lambda: sent(server, provider) == 1), cancel.set())
        ).start()
        started = time.monotonic()
        with llm, pytest.raises(LlmCancelled):
            llm.complete(ASK, TOOLS)
        # Without the cancel it waits out the 60 s of Retry-After, or for the 60 s answer.
        assert time.monotonic() - started < 30
        assert sent(server, provider) == 1


def test_a_missing_key_variable_is_named_and_the_value_never_shown(provider):
    settings = LlmSettings(provider=provider, model="m", api_key_env="TOKA_TEST_LLM_KEY")
    with pytest.raises(LlmError, match="environment variable TOKA_TEST_LLM_KEY .* is not set"):
        api_key_from_env(settings, environ={})
    key = api_key_from_env(settings, environ={"TOKA_TEST_LLM_KEY": KEY})
    assert key is not None and key.get_secret_value() == KEY and KEY not in repr(key) + str(key)


def _wait_for(condition, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
