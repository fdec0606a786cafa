"""LLM settings that need Prefect: API keys in Secret blocks, and rate limits as Prefect global
concurrency limits shared by every flow run and worker that uses the same model.

Both are set up when a run starts, before any task: a Secret block that cannot be read, or
limits the API refuses, refuse the run in one line (`LlmSetupError`).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Literal

import httpx
from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectAlreadyExists
from pydantic import SecretStr

from toka_agents.config.models import LlmSettings
from toka_agents.errors import LlmError, one_line
from toka_agents.llm.gateway import Acquire, from_environment
from toka_agents.planning import Plan


class LlmSetupError(Exception):
    """An LLM setting that needs Prefect (a Secret block, a rate limit) could not be set up."""


def read_secret_keys(plan: Plan) -> dict[str, SecretStr]:
    """The API keys of the plan's LLM agents that name a Prefect Secret block, by block name."""
    names = {
        agent.llm.api_key_secret
        for agent in plan.agents
        if agent.llm is not None
        and agent.llm.api_key_secret
        and any(t.kind == "llm" for t in agent.tasks)
    }
    keys = {}
    for name in sorted(names):
        try:
            value = Secret.load(name, _sync=True).get()  # type: ignore[call-overload]
        except Exception as exc:  # missing, of another type, or the API is away
            raise LlmSetupError(
                f"the Prefect Secret block {name!r} (llm.api_key_secret) cannot be read: "
                + one_line(exc)
            ) from None
        if not isinstance(value, str) or not value:
            raise LlmSetupError(f"the Prefect Secret block {name!r} (llm.api_key_secret) holds no key")
        keys[name] = SecretStr(value)
    return keys


RATE_LIMIT_BURST_SECONDS = 10
"""A rate limit lets through at once what it allows in this many seconds, then its steady rate."""
RATE_LIMIT_CANCEL_CHECK = 1.0
"""Seconds a call waits for a rate limit between looks at the run's cancel flag."""


@dataclass(frozen=True)
class RateLimit:
    """One of a model's Prefect global concurrency limits, used as a rate limit."""

    name: str
    per_minute: int
    unit: Literal["requests", "tokens"]

    @property
    def slots(self) -> int:
        return max(1, math.ceil(self.per_minute * RATE_LIMIT_BURST_SECONDS / 60))

    @property
    def decay(self) -> float:
        return self.per_minute / 60


def rate_limits_of(settings: LlmSettings) -> list[RateLimit]:
    """The global concurrency limits of a provider's model: one per limit its settings set,
    shared by every flow run and worker that uses the same provider and model."""
    model = re.sub(r"[/%&<>]", "-", f"{settings.provider}:{settings.model}")
    limits = []
    if settings.requests_per_minute is not None:
        limits.append(RateLimit(f"toka-llm {model} requests", settings.requests_per_minute, "requests"))
    if settings.tokens_per_minute is not None:
        limits.append(RateLimit(f"toka-llm {model} tokens", settings.tokens_per_minute, "tokens"))
    return limits


def _llm_settings_in_use(plan: Plan) -> list[LlmSettings]:
    found = []
    for agent in plan.agents:
        if agent.llm is not None and any(task.kind == "llm" for task in agent.tasks):
            try:
                found.append(from_environment(agent.llm))
            except LlmError:
                continue  # refused before this: llm_refusal names it
    return found


def upsert_rate_limits(plan: Plan) -> None:
    """Create or update the global concurrency limits the plan's models are rate-limited by."""
    limits = {limit.name: limit for s in _llm_settings_in_use(plan) for limit in rate_limits_of(s)}
    if not limits:
        return
    try:
        with get_client(sync_client=True) as client:
            for limit in limits.values():
                _upsert(client, limit)
    except Exception as exc:  # the API refused or is away: say so before any task starts
        raise LlmSetupError(f"cannot set up the LLM rate limits in Prefect: {one_line(exc)}") from None


def _upsert(client: SyncPrefectClient, limit: RateLimit) -> None:
    # Prefect's upsert reads, then creates: a run starting beside this one can create the limit
    # in between, and the create is refused (409). Asked again, it finds the limit and updates it.
    try:
        client.upsert_global_concurrency_limit_by_name(limit.name, limit.slots, limit.decay)
    except ObjectAlreadyExists:
        client.upsert_global_concurrency_limit_by_name(limit.name, limit.slots, limit.decay)


def rate_limit_hook(settings: LlmSettings, *, cancel: threading.Event) -> Acquire | None:
    """The gateway's `acquire`: waits on the model's Prefect rate limits before each request.
    A call's token estimate can exceed a limit's slots; it then occupies them all."""
    limits = rate_limits_of(settings)
    if not limits:
        return None

    def acquire(tokens: int) -> None:
        with get_client(sync_client=True) as client:
            for limit in limits:
                occupy = 1 if limit.unit == "requests" else min(tokens, limit.slots)
                _occupy(client, limit, occupy, cancel)

    return acquire


def _occupy(client: SyncPrefectClient, limit: RateLimit, slots: int, cancel: threading.Event) -> None:
    """Takes `slots` of a rate limit, asking the API again when it says when (423 Locked,
    Retry-After) and looking at the cancel flag in between; returns early on a cancel (the
    gateway ends the call when it sees it).

    Prefect's `rate_limit(timeout_seconds=...)` would do the asking, but a wait that outlasts its
    timeout is logged as an ERROR with a traceback by its acquisition service, and without a
    timeout a cancel could not interrupt the wait.
    """
    while not cancel.is_set():
        try:
            taken = client.increment_concurrency_slots(
                names=[limit.name], slots=slots, mode="rate_limit"
            ).json()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:
                raise LlmError(f"the rate limit {limit.name!r} failed: {one_line(exc)}") from None
            hinted = float(exc.response.headers.get("Retry-After") or RATE_LIMIT_CANCEL_CHECK)
            cancel.wait(min(hinted, RATE_LIMIT_CANCEL_CHECK))
            continue
        if not taken:
            raise LlmError(f"the rate limit {limit.name!r} is not in Prefect (was it deleted?)")
        return
