"""The LLM gateway: sends a conversation and its tools to the configured model over httpx and
returns the model's reply, checked.

It retries what is worth retrying (429, 5xx, lost connections) with exponential backoff and
jitter, honouring `Retry-After`; a request that outlasts `llm.timeout` is abandoned and fails
the call, never queued again behind itself; it calls the rate-limit hook before each
request; it counts tokens; it never lets the API key into an error, a log record or a repr.
It knows no Prefect: the rate-limit hook and the key come from its caller.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
from jsonschema import Draft202012Validator
from pydantic import BaseModel, SecretStr

from toka_agents import text
from toka_agents.config.models import LlmSettings
from toka_agents.llm import anthropic, openai
from toka_agents.llm.errors import LlmCancelled, LlmError, MalformedReply
from toka_agents.llm.messages import Message, ModelReply, ToolSpec
from toka_agents.llm.wire import Request

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
"""Seconds one request may take when the settings give no `timeout`."""
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 60.0
"""A longer `Retry-After` is cut to this, so one call never sleeps for hours."""
RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Besides every 5xx: what the official SDKs retry too."""
REDACTED = "[redacted]"
CANCEL_POLL = 0.2
"""Seconds between looks at the cancel flag while a request is under way."""

Acquire = Callable[[int], None]
"""Called before each request with an upper bound of its tokens; returns when it may go."""


class WireFormat(Protocol):
    """What the gateway needs of a provider module (`openai`, `anthropic`)."""

    NAME: str
    DEFAULT_BASE_URL: str
    PATH: str

    def headers(self, api_key: str | None) -> dict[str, str]: ...

    def request_body(self, request: Request) -> dict[str, Any]: ...

    def parse_reply(self, data: Any) -> ModelReply: ...


WIRE_FORMATS: dict[str, WireFormat] = {"openai": openai, "anthropic": anthropic}  # type: ignore[dict-item]


class TokenUsage(BaseModel):
    """Model calls and their tokens, added up."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


class Retry(BaseModel):
    """One failed attempt that was retried: why, and how long the gateway waited."""

    attempt: int
    reason: str
    wait: float
    status_code: int | None = None
    retry_after: float | None = None


KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
"""Where the official SDKs look for the key when the settings name no source."""


def api_key_from_env(settings: LlmSettings, environ: Mapping[str, str] = os.environ) -> SecretStr | None:
    """The key in the variable `api_key_env` names; when the settings name no source, the one in
    the provider's usual variable (OPENAI_API_KEY, ANTHROPIC_API_KEY) if it is set, as the
    official SDKs read it; else None (local servers such as Ollama need none)."""
    if settings.api_key_env is None:
        if settings.api_key_secret is None and (value := environ.get(KEY_ENV[settings.provider])):
            return SecretStr(value)
        return None
    value = environ.get(settings.api_key_env)
    if not value:
        raise LlmError(
            f"the environment variable {settings.api_key_env} (llm.api_key_env) that should hold "
            f"the {settings.provider} API key is not set"
        )
    return SecretStr(value)


MODEL_ENV = "TOKA_LLM_MODEL"
BASE_URL_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


def from_environment(settings: LlmSettings, environ: Mapping[str, str] = os.environ) -> LlmSettings:
    """`settings` with what they leave unset taken from the environment, as the official SDKs
    do: the model from `TOKA_LLM_MODEL`, the base URL from `OPENAI_BASE_URL` or
    `ANTHROPIC_BASE_URL`. Raises `LlmError` when no model is named anywhere."""
    changes: dict[str, str] = {}
    if settings.model is None:
        model = environ.get(MODEL_ENV)
        if not model:
            raise LlmError(
                f"no {settings.provider} model is named: set llm.model in the config, the "
                f"environment variable {MODEL_ENV}, or the run parameter llm_model"
            )
        changes["model"] = model
    if settings.base_url is None and (base_url := environ.get(BASE_URL_ENV[settings.provider])):
        changes["base_url"] = base_url
    return settings.model_copy(update=changes) if changes else settings


class Gateway:
    """Sends conversations to one provider and model, as `settings` say.

    `acquire`, when given, is called before every request (retries included) with an upper
    bound of the request's tokens: the caller's rate limits wait there. `cancel`, when set,
    ends the call with `LlmCancelled` within `CANCEL_POLL` seconds, in a retry wait or in the
    middle of a request.
    """

    def __init__(
        self,
        settings: LlmSettings,
        api_key: SecretStr | str | None = None,
        *,
        acquire: Acquire | None = None,
        cancel: threading.Event | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.wire: WireFormat = WIRE_FORMATS[settings.provider]
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._acquire = acquire
        self._cancel = cancel or threading.Event()
        self.timeout = settings.timeout or DEFAULT_TIMEOUT
        self._client = client or httpx.Client(timeout=httpx.Timeout(self.timeout))
        self._owns_client = client is None
        base = httpx.URL((settings.base_url or self.wire.DEFAULT_BASE_URL).rstrip("/"))
        self.url = base.copy_with(path=base.path.rstrip("/") + self.wire.PATH)
        shown = base.copy_with(username=None, password=None, query=None)
        self.where = f"{settings.provider} model {settings.model} at {shown}"
        self.usage = TokenUsage()
        self.retries: list[Retry] = []

    def __repr__(self) -> str:
        return f"Gateway({self.where!r})"

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> ModelReply:
        """The model's reply to `messages`, its tool calls checked against `tools`.

        Raises `MalformedReply` when the reply cannot be used, `LlmError` when the provider
        refuses the request or retries run out, `LlmCancelled` when cancelled.
        """
        key = self._api_key.get_secret_value() if self._api_key else None
        request = Request(
            model=self.settings.model or "",
            messages=messages,
            tools=tools,
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
        )
        body = self.wire.request_body(request)
        content = json.dumps(body).encode()
        estimate = estimated_tokens(len(content), self.settings.max_tokens)
        headers = {"User-Agent": "toka-agents", **self.wire.headers(key)}
        attempts = self.settings.max_retries + 1
        for attempt in range(1, attempts + 1):
            self._stop_if_cancelled()
            if self._acquire is not None:
                self._acquire(estimate)
                self._stop_if_cancelled()
            status: int | None = None
            hinted: float | None = None
            try:
                response = self._post(content, headers)
            except httpx.TimeoutException:
                # Abandoned (httpx closes the connection), and not sent again: a local server
                # such as llama.cpp's goes on generating the abandoned answer, and a retry
                # would only queue behind it.
                raise LlmError(
                    f"{self.where}: no answer within {self.timeout:g}s (llm.timeout); not retried",
                    attempts=attempt,
                ) from None
            except httpx.RequestError as exc:
                reason = f"connection failed: {self._redact(str(exc) or type(exc).__name__)}"
            else:
                if response.is_success:
                    return self._reply(response, tools)
                status = response.status_code
                reason = f"{status} {response.reason_phrase}: {self._provider_reason(response)}"
                if status not in RETRYABLE_STATUS and status < 500:
                    raise LlmError(f"{self.where} refused the request: {reason}", status_code=status)
                hinted = retry_after(response.headers)
            if attempt == attempts:
                raise LlmError(
                    f"{self.where} failed after {attempts} attempt(s) (llm.max_retries "
                    f"{self.settings.max_retries}): {reason}",
                    status_code=status,
                    attempts=attempts,
                )
            wait = backoff(attempt) if hinted is None else hinted
            self.retries.append(
                Retry(attempt=attempt, reason=reason, wait=wait, status_code=status, retry_after=hinted)
            )
            logger.warning(
                "%s: %s; retry %d of %d in %.1fs",
                self.where,
                text.one_line(reason, 500),
                attempt,
                self.settings.max_retries,
                wait,
            )
            if self._cancel.wait(wait):
                break
        raise LlmCancelled(f"{self.where}: the call was cancelled")

    def _post(self, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """The request, sent from a thread of its own so that a cancel need not wait for it:
        the call ends at once, and the thread ends with the request (or when `close` closes
        the client under it)."""
        done = threading.Event()
        outcome: list[Any] = []

        def send() -> None:
            try:
                outcome.append(self._client.post(self.url, content=content, headers=headers))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=send, name="toka-llm-request", daemon=True).start()
        while not done.wait(CANCEL_POLL):
            self._stop_if_cancelled()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        response: httpx.Response = outcome[0]
        return response

    def _stop_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise LlmCancelled(f"{self.where}: the call was cancelled")

    def _reply(self, response: httpx.Response, tools: Sequence[ToolSpec]) -> ModelReply:
        try:
            data = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = response.content[:200].decode(errors="replace")
            raise MalformedReply(
                "bad JSON", f"the response body is not JSON: {self._redact(snippet)!r}"
            ) from None
        try:
            reply = self.wire.parse_reply(data)
        except MalformedReply as exc:
            self.usage.add(exc.input_tokens, exc.output_tokens)
            raise
        self.usage.add(reply.input_tokens, reply.output_tokens)
        check_tool_calls(reply, tools)
        return reply

    def _provider_reason(self, response: httpx.Response) -> str:
        return self._redact(provider_reason(response))

    def _redact(self, text: str) -> str:
        if self._api_key is None:
            return text
        key = self._api_key.get_secret_value()
        return text.replace(key, REDACTED) if key else text


def check_tool_calls(reply: ModelReply, tools: Sequence[ToolSpec]) -> None:
    """Every tool call names one of `tools` with arguments that fit its schema, or `MalformedReply`."""
    by_name = {tool.name: tool for tool in tools}
    spent = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}
    for call in reply.tool_calls:
        tool = by_name.get(call.name)
        if tool is None:
            known = ", ".join(by_name) or "none"
            raise MalformedReply(
                "unknown tool",
                f"the reply calls {call.name!r}, which is no tool here (the tools: {known})",
                **spent,
            )
        error = next(iter(Draft202012Validator(tool.parameters).iter_errors(call.arguments)), None)
        if error is not None:
            at = "/".join(str(part) for part in error.absolute_path)
            raise MalformedReply(
                "arguments off schema",
                f"the arguments of {call.name!r} do not fit its schema: {error.message}"
                + (f" (at {at})" if at else ""),
                **spent,
            )


def provider_reason(response: httpx.Response) -> str:
    """The provider's own words for an error: `error.message` (OpenAI, Anthropic), `error`
    (Ollama), `detail` or `message` (others), else the start of the body."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, data.get("detail"), data.get("message")):
            if isinstance(value, str) and value:
                return value
    text = response.text.strip()
    return text[:300] if text else "no reason given"


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait (`retry-after-ms`, or `Retry-After` in seconds or as an
    HTTP date), cut to `RETRY_AFTER_MAX`; None when it asks nothing usable."""
    seconds: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = None
    if seconds is None and (value := headers.get("retry-after")) is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: about 0.5, 1, 2, 4 s ... up to 30 s, less up to a quarter."""
    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
    return delay * (1 - 0.25 * random.random())


def estimated_tokens(body_bytes: int, max_tokens: int) -> int:
    """An upper bound of what one call can use: its body at about 4 bytes a token, plus the
    most it may answer with. Rate limits reserve this much before the call."""
    return math.ceil(body_bytes / 4) + max_tokens
