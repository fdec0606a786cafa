"""The scripted server speaks the real wire formats: the official `openai` and `anthropic`
packages, used as its clients, round-trip tool calls and usage through it, read its errors as
theirs, and put on the wire what toka-agents' gateway puts there.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from llm_server import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    rate_limited,
    scripted_server,
    text,
    tool_call,
)
from openai.types.chat import ChatCompletion

from toka_agents.config.models import LlmSettings
from toka_agents.llm import Gateway, SystemMessage, ToolMessage, ToolSpec, UserMessage

KEY = "sk-wire-test-0123456789"
RUN_CODE_SCHEMA = {
    "type": "object",
    "properties": {
        "language": {"type": "string", "enum": ["python", "shell"]},
        "source": {"type": "string"},
    },
    "required": ["language", "source"],
}
RUN_CODE = ToolSpec(name="run_code", description="Run code in the sandbox.", parameters=RUN_CODE_SCHEMA)
# The tool as each SDK's user writes it.
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": RUN_CODE.name,
            "description": RUN_CODE.description,
            "parameters": RUN_CODE_SCHEMA,
        },
    }
]
ANTHROPIC_TOOLS = [
    {"name": RUN_CODE.name, "description": RUN_CODE.description, "input_schema": RUN_CODE_SCHEMA}
]
SYSTEM = "You are a careful agent."
ASK = "Print 1 with Python."
SCRIPT = (tool_call("run_code", language="python", source="print(1)"), text("It printed 1."))


def answered(call, output: str) -> list[dict]:
    """The assistant turn that made an SDK tool `call`, and the tool turn with its `output`."""
    return [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call.model_dump(include={"id", "type", "function"})],
        },
        {"role": "tool", "tool_call_id": call.id, "content": output},
    ]


def test_openai_sdk_round_trips_a_tool_call_and_usage():
    with scripted_server(*SCRIPT, api_key=KEY) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=messages, tools=OPENAI_TOOLS, tool_choice="auto"
        )
        # The SDK's own types, validated strictly, accept the server's body.
        first = ChatCompletion.model_validate(raw.http_response.json())
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.function.name == "run_code"
        assert json.loads(call.function.arguments) == {"language": "python", "source": "print(1)"}
        assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0

        second = client.chat.completions.create(
            model="gpt-test",
            messages=[*messages, *answered(call, "1\n")],
            tools=OPENAI_TOOLS,
            tool_choice="auto",
        )
        assert second.choices[0].message.content == "It printed 1."
        assert second.choices[0].finish_reason == "stop" and second.usage.total_tokens > 0
        sent = server.requests_to(OPENAI_PATH)
        assert [r.headers["authorization"] for r in sent] == [f"Bearer {KEY}"] * 2
        assert sent[1].body["messages"][3] == {"role": "tool", "tool_call_id": call.id, "content": "1\n"}


def test_anthropic_sdk_round_trips_tool_use_and_usage():
    with scripted_server(*SCRIPT, api_key=KEY) as server:
        client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key=KEY, max_retries=0)
        messages = [{"role": "user", "content": ASK}]
        raw = client.messages.with_raw_response.create(
            model="claude-test", max_tokens=512, system=SYSTEM, messages=messages, tools=ANTHROPIC_TOOLS
        )
        first = anthropic.types.Message.model_validate(raw.http_response.json())
        assert first.stop_reason == "tool_use"
        (use,) = [block for block in first.content if block.type == "tool_use"]
        assert (use.name, use.input) == ("run_code", {"language": "python", "source": "print(1)"})
        assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

        second = client.messages.create(
            model="claude-test",
            max_tokens=512,
            system=SYSTEM,
            messages=[
                *messages,
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "1\n"}],
                },
            ],
            tools=ANTHROPIC_TOOLS,
        )
        assert second.stop_reason == "end_turn" and second.content[0].text == "It printed 1."
        sent = server.requests_to(ANTHROPIC_PATH)
        assert (
            sent[0].body["system"] == SYSTEM
            and sent[1].body["messages"][2]["content"][0]["tool_use_id"] == use.id
        )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_sdks_read_the_servers_rate_limit_as_their_own_error(provider):
    with scripted_server(rate_limited("0", "Slow down, please")) as server:
        if provider == "openai":
            client = openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0)
            with pytest.raises(openai.RateLimitError, match="Slow down, please"):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": ASK}])
        else:
            client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key=KEY, max_retries=0)
            with pytest.raises(anthropic.RateLimitError, match="Slow down, please") as caught:
                client.messages.create(
                    model="m", max_tokens=10, messages=[{"role": "user", "content": ASK}]
                )
            assert caught.value.body["error"]["type"] == "rate_limit_error"


def _gateway_conversation(provider: str, server) -> None:
    """The conversation of the SDK tests, sent by the gateway."""
    base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    settings = LlmSettings(
        provider=provider, model=f"{provider}-test", base_url=base_url, max_tokens=512
    )
    with Gateway(settings, api_key=KEY) as gateway:
        messages = [SystemMessage(content=SYSTEM), UserMessage(content=ASK)]
        first = gateway.complete(messages, [RUN_CODE])
        (call,) = first.tool_calls
        messages += [
            first.as_message(),
            ToolMessage(tool_call_id=call.id, name=call.name, content="1\n"),
        ]
        assert gateway.complete(messages, [RUN_CODE]).text == "It printed 1."


def test_gateway_sends_what_the_openai_sdk_sends():
    with scripted_server(*SCRIPT, *SCRIPT, api_key=KEY) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
        first = client.chat.completions.create(
            model="openai-test",
            messages=messages,
            tools=OPENAI_TOOLS,
            tool_choice="auto",
            max_tokens=512,
        )
        call = first.choices[0].message.tool_calls[0]
        client.chat.completions.create(
            model="openai-test",
            messages=[*messages, *answered(call, "1\n")],
            tools=OPENAI_TOOLS,
            tool_choice="auto",
            max_tokens=512,
        )
        _gateway_conversation("openai", server)
        sdk, gateway = server.requests_to(OPENAI_PATH)[:2], server.requests_to(OPENAI_PATH)[2:]
        assert [r.body for r in gateway] == [r.body for r in sdk]
        for name in ("authorization", "content-type", "accept"):
            assert gateway[0].headers[name] == sdk[0].headers[name], name


def test_gateway_sends_what_the_anthropic_sdk_sends():
    with scripted_server(*SCRIPT, *SCRIPT, api_key=KEY) as server:
        client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key=KEY, max_retries=0)
        messages = [{"role": "user", "content": [{"type": "text", "text": ASK}]}]
        first = client.messages.create(
            model="anthropic-test",
            max_tokens=512,
            system=SYSTEM,
            messages=messages,
            tools=ANTHROPIC_TOOLS,
            tool_choice={"type": "auto"},
        )
        use = first.content[0]
        client.messages.create(
            model="anthropic-test",
            max_tokens=512,
            system=SYSTEM,
            messages=[
                *messages,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "1\n"}],
                },
            ],
            tools=ANTHROPIC_TOOLS,
            tool_choice={"type": "auto"},
        )
        _gateway_conversation("anthropic", server)
        sent = server.requests_to(ANTHROPIC_PATH)
        sdk, gateway = sent[:2], sent[2:]
        assert [r.body for r in gateway] == [r.body for r in sdk]
        # The headers that matter to the API, exactly as the SDK sends them: version and key.
        for name in ("anthropic-version", "authorization", "content-type", "accept"):
            assert gateway[0].headers.get(name) == sdk[0].headers.get(name), name
        assert sdk[0].headers["anthropic-version"] == "2026-10-21"
        assert "x-api-key" not in sdk[0].headers and "x-api-key" not in gateway[0].headers
