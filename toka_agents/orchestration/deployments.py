"""Deployments: the `orchestrate` flow that deployments run, its run form, `deploy` and `serve`.

The flow's parameters are the form the Prefect UI shows for a custom run: every field has a
title, a description and a default, enums are choices and lists are lists. No parameter is
optional in the `X | None` sense, because the UI draws those as a type toggle; an empty value
("", 0, "config") means "what the config says". The flow checks its parameters itself, so a
bad value fails the flow run at once with a message naming the field and the value.

`deploy` creates or updates a deployment of that flow on a work pool; `serve` runs one
without a work pool, in this process. Both record the flow by its module path
(`toka_agents.orchestration.deployments.orchestrate`, the flow `flows/orchestrate.py` exposes),
so any worker with toka-agents installed runs it whatever its working directory.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints
from uuid import UUID

from prefect import flow
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Interval, RRule, Schedule
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from toka_agents.config import InputDeclaration, load
from toka_agents.config.inputs import inputs_schema
from toka_agents.config.limits import at_most_timeout, parse_duration
from toka_agents.config.models import LlmOverrides
from toka_agents.errors import ConfigError, ConfigIssue, TokaError, one_line
from toka_agents.orchestration import reporting, task_logs
from toka_agents.orchestration.flow import RunOptions, execute_plan
from toka_agents.orchestration.scheduler import schedule_of
from toka_agents.planning import plan, select_agents, validate

FLOW_NAME = "toka-orchestrate"
DEFAULT_WORK_POOL = "toka"
PARAMETERS = "<run parameters>"
"""The `file` of the issues about a run's parameters."""

_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def form_field(title: str, description: str, **constraints: Any) -> FieldInfo:
    """A run form field. Prefect titles every field with its parameter's name and reads
    descriptions only from the docstring or a `Field` default, so the title and description
    travel in `json_schema_extra`, which its schema keeps as given."""
    return Field(json_schema_extra={"title": title, "description": description}, **constraints)


@flow(name=FLOW_NAME, validate_parameters=False)
def orchestrate(
    paths: Annotated[
        list[str],
        form_field(
            "Config paths",
            "Config files (.yaml, .yml, .toml) or directories of them, on the worker's disk. "
            "Relative paths start from the worker's working directory.",
        ),
    ] = [],  # noqa: B006  (never mutated; the UI shows it as the default)
    config: Annotated[
        str,
        form_field(
            "Inline config",
            "A config written here (YAML, the native format), for a config that is not on the "
            "worker's disk. Loaded after the paths, so its settings win. Code must be inline "
            "(`source:`), since there is no directory for `file:` to start from.",
        ),
    ] = "",
    inputs: Annotated[
        dict[str, Any],
        form_field(
            "Inputs",
            "The values of the config's `inputs:`, by name. A deployment of a config that "
            "declares inputs shows a field for each here.",
        ),
    ] = {},  # noqa: B006
    agents: Annotated[
        list[str],
        form_field(
            "Only these agents",
            "Run only these agents and the agents they require. Empty: every agent.",
        ),
    ] = [],  # noqa: B006
    conditions: Annotated[
        list[str],
        form_field("Conditions", "Conditional task groups to include (`condition:` of a task)."),
    ] = [],  # noqa: B006
    dry_run: Annotated[
        bool, form_field("Dry run", "Walk the DAG in Prefect without running any code or model.")
    ] = False,
    max_concurrent_agents: Annotated[
        int,
        form_field(
            "Max concurrent agents",
            "Agents running at once. 0: the config's `max_concurrent_agents`.",
            ge=0,
        ),
    ] = 0,
    optional_dependencies: Annotated[
        Literal["config", "ignore", "order"],
        form_field(
            "Optional dependencies",
            "`order`: an agent waits for the agents it optionally requires when both run. "
            "`ignore`: they order nothing. `config`: the config's setting.",
        ),
    ] = "config",
    allow_unsandboxed: Annotated[
        bool,
        form_field(
            "Allow unsandboxed agents",
            "Let agents that set `sandbox: false` run, in a container with the network and "
            "a writable workspace. Off: such configs are refused.",
        ),
    ] = False,
    llm_provider: Annotated[
        Literal["config", "openai", "anthropic"],
        form_field(
            "LLM provider",
            "The wire format of LLM tasks' provider (`openai` also covers Ollama and vLLM). "
            "`config`: each agent's own.",
        ),
    ] = "config",
    llm_model: Annotated[
        str, form_field("LLM model", "The model LLM tasks use. Empty: each agent's own.")
    ] = "",
    llm_base_url: Annotated[
        str,
        form_field("LLM base URL", "The provider's API address (http or https). Empty: the config's."),
    ] = "",
    llm_timeout: Annotated[
        str,
        form_field(
            "LLM timeout",
            "The limit of one model request: 30s, 10m (at most 30d). A slow local model needs "
            "more than the default 2m. Empty: the config's.",
        ),
    ] = "",
    llm_api_key_secret: Annotated[
        str,
        form_field(
            "LLM API key secret block",
            "The name of the Prefect Secret block that holds the API key. Empty: the config's.",
        ),
    ] = "",
) -> reporting.RunSummary:
    """Load, plan and run an orchestration: the flow that toka-agents deployments run.

    Its parameters are the Prefect UI's run form.
    """
    task_logs.tidy_failure_lines()  # before any refusal: a worker's engine raises its reason too
    try:
        form = RunForm.from_parameters(locals())
    except ConfigError as exc:
        return reporting.config_failed_state(exc.issues)  # type: ignore[return-value]
    with tempfile.TemporaryDirectory(prefix="toka-inline-") as scratch:
        paths_to_load = list(form.paths)
        if form.config:
            inline = Path(scratch) / "inline-config.yaml"
            inline.write_text(form.config)
            paths_to_load.append(str(inline))
        settings: dict[str, Any] = dict(
            conditions=form.conditions,
            optional_dependencies=form.optional_mode,
            max_concurrent_agents=form.max_concurrent_agents or None,
            allow_unsandboxed=form.allow_unsandboxed or None,
            llm_overrides=form.llm_overrides,
            inputs=form.inputs,
        )
        checked = validate(paths_to_load, **settings)
        if checked.plan is None:
            return reporting.config_failed_state(checked.issues)  # type: ignore[return-value]
        planned = checked.plan
        if form.agents:
            try:
                planned = plan(select_agents(load(*paths_to_load), form.agents), **settings)
            except ConfigError as exc:
                return reporting.config_failed_state(exc.issues)  # type: ignore[return-value]
    # A run looks for a cancel every second, so its containers go within seconds of one.
    options = RunOptions(dry_run=form.dry_run, cancel_poll_seconds=1.0)
    return execute_plan(schedule_of(planned), options)  # type: ignore[return-value]


def _form_model() -> type[BaseModel]:
    """The run form as a pydantic model, made from the flow's own signature."""
    hints = get_type_hints(orchestrate.fn, include_extras=True)
    fields: dict[str, Any] = {
        name: (hints[name], parameter.default)
        for name, parameter in inspect.signature(orchestrate.fn).parameters.items()
    }
    config = ConfigDict(extra="forbid", strict=False)
    return create_model("RunFormFields", __config__=config, **fields)


_FIELDS = _form_model()


class RunForm(BaseModel):
    """The checked parameters of one run of `orchestrate`."""

    paths: list[str]
    config: str
    inputs: dict[str, Any]
    agents: list[str]
    conditions: list[str]
    dry_run: bool
    max_concurrent_agents: int
    optional_dependencies: Literal["config", "ignore", "order"]
    allow_unsandboxed: bool
    llm_provider: Literal["config", "openai", "anthropic"]
    llm_model: str
    llm_base_url: str
    llm_timeout: str
    llm_api_key_secret: str

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> RunForm:
        """Check parameters as the flow got them; raise `ConfigError` naming each bad field
        and its value, every one at once."""
        try:
            fields = _FIELDS.model_validate(dict(parameters))
        except ValidationError as exc:
            raise ConfigError(_issues_of(exc)) from None
        form = cls.model_validate(fields.model_dump())
        issues = form._semantic_issues()
        if issues:
            raise ConfigError(issues)
        return form

    def _semantic_issues(self) -> list[ConfigIssue]:
        issues = []
        if not self.paths and not self.config.strip():
            issues.append(_issue("paths", self.paths, "give config paths or an inline config"))
        for name in ("paths", "agents", "conditions"):
            for value in getattr(self, name):
                if not value.strip():
                    issues.append(_issue(name, value, "an entry is empty"))
        if self.llm_base_url and not re.match(r"^https?://[^\s/]+", self.llm_base_url):
            issues.append(
                _issue("llm_base_url", self.llm_base_url, "not an http:// or https:// address")
            )
        if self.llm_timeout:
            try:
                at_most_timeout(parse_duration(self.llm_timeout))
            except ValueError as exc:
                issues.append(_issue("llm_timeout", self.llm_timeout, str(exc)))
        if self.llm_api_key_secret and not _BLOCK_NAME.match(self.llm_api_key_secret):
            issues.append(
                _issue(
                    "llm_api_key_secret",
                    self.llm_api_key_secret,
                    "not a block name (lowercase letters, digits and dashes)",
                )
            )
        return issues

    @property
    def optional_mode(self) -> Literal["ignore", "order"] | None:
        return None if self.optional_dependencies == "config" else self.optional_dependencies

    @property
    def llm_overrides(self) -> LlmOverrides:
        return LlmOverrides(
            provider=None if self.llm_provider == "config" else self.llm_provider,
            model=self.llm_model or None,
            base_url=self.llm_base_url or None,
            api_key_secret=self.llm_api_key_secret or None,
            timeout=self.llm_timeout or None,
        )


def _issue(field: str, value: object, message: str) -> ConfigIssue:
    return ConfigIssue(PARAMETERS, field, f"{value!r}: {message}")


def _issues_of(error: ValidationError) -> list[ConfigIssue]:
    issues = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            known = ", ".join(inspect.signature(orchestrate.fn).parameters)
            issues.append(ConfigIssue(PARAMETERS, field, f"no such parameter (parameters: {known})"))
            continue
        issues.append(_issue(field, problem["input"], problem["msg"].lower()))
    return issues


def _schedules(
    cron: str | None, interval: float | timedelta | None, rrule: str | None
) -> list[Schedule]:
    """At most one schedule, from whichever of cron, interval (seconds) and rrule is given."""
    given = {
        kind: value
        for kind, value in (("cron", cron), ("interval", interval), ("rrule", rrule))
        if value is not None
    }
    if len(given) > 1:
        raise TokaError(f"give one schedule, not {' and '.join(given)}: cron, interval or rrule")
    if not given:
        return []
    [(kind, value)] = given.items()
    try:
        if kind == "interval":
            seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
            if seconds <= 0:
                raise ValueError("it must be more than 0 seconds")
            return [Interval(timedelta(seconds=seconds))]
        return [Cron(value) if kind == "cron" else RRule(value)]
    except (ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise TokaError(f"{kind} {value!r} is not a valid schedule: {reason}") from None


def _deployment(
    paths: tuple[str | Path, ...],
    *,
    name: str,
    cron: str | None,
    interval: float | timedelta | None,
    parameters: Mapping[str, Any] | None,
    rrule: str | None = None,
    paused: bool = False,
    work_pool: str | None = None,
) -> RunnerDeployment:
    """A deployment of `orchestrate` with `paths` (made absolute) as its config paths,
    after checking the name, the schedule, the parameters and the configs themselves.
    Without a work pool, it is one to serve from this process."""
    if not name or not name.strip() or "/" in name:
        raise TokaError(f"deployment name {name!r}: give a name without '/'")
    schedules = _schedules(cron, interval, rrule)
    chosen = dict(parameters or {})
    if "paths" in chosen and paths:
        raise TokaError("give config paths as arguments or as parameters['paths'], not both")
    if paths:
        chosen["paths"] = [str(Path(path).resolve()) for path in paths]
    form = RunForm.from_parameters({**_defaults(), **chosen})
    declared: Mapping[str, InputDeclaration] = {}
    if form.paths and not form.config:
        # A run from the form gives what a required input lacks; a scheduled run cannot.
        checked = validate(
            form.paths,
            llm_overrides=form.llm_overrides,
            inputs=form.inputs,
            require_inputs=bool(schedules),
        )
        if not checked.ok:
            raise ConfigError(checked.issues)
        if checked.plan is not None:
            declared = checked.plan.declared_inputs
            # Stored as their types, so the form shows them so and the server checks them so.
            if form.inputs:
                chosen["inputs"] = {name: checked.plan.inputs[name] for name in form.inputs}
    deployment = RunnerDeployment.from_flow(
        orchestrate,
        name=name,
        schedules=schedules,
        paused=paused,
        parameters=chosen,
        work_pool_name=work_pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"toka-agents: {', '.join(form.paths) or 'an inline config'}",
    )
    if declared:
        # Prefect's UI draws an object's properties as a group of fields; its server checks a
        # run's values against them. (The schema has no public setter.)
        fields = deployment._parameter_openapi_schema.properties
        fields["inputs"] = {**fields["inputs"], **inputs_schema(declared, chosen.get("inputs", {}))}
    return deployment


def _defaults() -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(orchestrate.fn).parameters.items()
    }


def deploy(
    *paths: str | Path,
    name: str,
    cron: str | None = None,
    interval: float | timedelta | None = None,
    rrule: str | None = None,
    work_pool: str = DEFAULT_WORK_POOL,
    parameters: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    paused: bool = False,
) -> UUID:
    """Create or update the deployment `toka-orchestrate/<name>` of the configs in `paths` on
    a work pool, with at most one schedule (cron, interval in seconds, or RFC 5545 rrule);
    return its id.

    `inputs` are the deployment's values of the config's `inputs:` (a run may change them in
    the form); `parameters` sets other fields of the run form (`dry_run`, `agents`, ...). The paths are
    stored absolute: a worker on this machine finds them from any directory. Raises
    `TokaError` (a `ConfigError` for configs and parameters) with a one-line reason.
    """
    deployment = _deployment(
        paths,
        name=name,
        cron=cron,
        interval=interval,
        parameters=_with_inputs(parameters, inputs),
        rrule=rrule,
        paused=paused,
        work_pool=work_pool,
    )
    _check_work_pool(work_pool)
    try:
        return deployment.apply(_sync=True)  # a coroutine, not an id, inside a running loop otherwise
    except Exception as exc:
        raise TokaError(f"could not deploy {FLOW_NAME}/{name}: {one_line(exc)}") from None


def _with_inputs(
    parameters: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
) -> dict[str, Any]:
    chosen = dict(parameters or {})
    if inputs is not None:
        if "inputs" in chosen:
            raise TokaError("give inputs as inputs= or as parameters['inputs'], not both")
        chosen["inputs"] = dict(inputs)
    return chosen


def _check_work_pool(work_pool: str) -> None:
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_work_pool(work_pool)
    except ObjectNotFound:
        raise TokaError(
            f"work pool {work_pool!r} does not exist: create it with "
            f"`prefect work-pool create {work_pool} --type process`"
        ) from None
    except Exception as exc:
        raise TokaError(f"cannot reach the Prefect API: {one_line(exc)}") from None


def serve(
    *paths: str | Path,
    name: str,
    cron: str | None = None,
    interval: float | timedelta | None = None,
    parameters: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> None:
    """Serve the deployment `toka-orchestrate/<name>` from this process, without a work pool
    (Prefect's `serve`): it runs the deployment's scheduled runs and the runs started from the
    UI or with `prefect deployment run`, until the process is stopped (Ctrl-C, SIGTERM)."""
    deployment = _deployment(
        paths, name=name, cron=cron, interval=interval, parameters=_with_inputs(parameters, inputs)
    )
    from prefect import serve as prefect_serve

    prefect_serve(deployment)
