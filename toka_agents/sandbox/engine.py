"""The connection to the Docker engine: which engine (`DOCKER_HOST`), whether it is this
machine's own, and one error, `EngineUnreachable`, for an engine that cannot be reached.

The engine is the one `DOCKER_HOST` names, `unix://`, `tcp://` (with `DOCKER_TLS_VERIFY` and
`DOCKER_CERT_PATH`) or `ssh://`, else the current Docker context's, else the local socket. A
client made here connects at its first call, not when it is made, and asks the engine again
at every call after: a run that starts while its engine is down (or restarting) gets a task
failure per call, `Docker engine not reachable at <url>: <reason>`, which the task's retries
may outlive, instead of a run without a sandbox at all.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Mapping
from typing import Any

import docker
from docker.context import ContextAPI
from docker.errors import DockerException
from docker.utils import kwargs_from_env
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import RequestException

from toka_agents.errors import SandboxError

LOCAL_SOCKETS = ("unix:///var/run/docker.sock", "unix:///run/docker.sock")
"""Where this machine's own engine listens by default."""
DEFAULT_URL = LOCAL_SOCKETS[0]
ENGINE_ERRORS = (DockerException, RequestException, OSError)
"""What a call to the engine (or the connection to it) may raise."""


class EngineUnreachable(SandboxError, DockerException):
    """The engine could not be reached: nothing listens at its address, or it closed the
    connection (stopped, restarted). A `DockerException` too, so every place that handles an
    engine's error handles this one."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Docker engine not reachable at {url}: {reason}")
        self.url = url
        self.reason = reason


def engine_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The docker SDK's client settings for the engine this process uses, as `docker.from_env`
    finds them: `DOCKER_HOST` and its TLS variables, else the current Docker context."""
    environment = dict(os.environ if environ is None else environ)
    settings = kwargs_from_env(environment=environment)
    if "base_url" not in settings:
        for key, value in ContextAPI.kwargs_from_context(environment=environment).items():
            settings.setdefault(key, value)
    return settings


def engine_url(environ: Mapping[str, str] | None = None) -> str:
    """The address of the engine this process uses, e.g. `unix:///var/run/docker.sock`."""
    url = engine_settings(environ).get("base_url") or DEFAULT_URL
    return url.replace("http+unix://", "unix://")


def is_local_engine(url: str) -> bool:
    """Whether `url` is this machine's own engine at its default socket, whose containers can
    bind-mount this machine's directories. Any other address counts as another machine's."""
    return url.rstrip("/") in LOCAL_SOCKETS


def connect(*, pool_size: int = 10, timeout: float = 60, check: bool = True) -> docker.DockerClient:
    """A client for the engine of `engine_url()`. `check`: connect now and raise
    `EngineUnreachable` if that fails; else connect at the client's first call."""
    url = engine_url()
    client = EngineClient(url, pool_size=pool_size, timeout=timeout)
    if check:
        try:
            client.ping()
        except EngineUnreachable:
            raise
        except (DockerException, RequestException) as exc:  # it answered, but not as an engine does
            raise SandboxError(f"the Docker engine at {url} did not answer a ping: {exc}") from exc
    return client


class EngineClient(docker.DockerClient):
    """docker's client for one engine, opened at its first use (the SDK asks the engine its API
    version when a client is made). A connection that fails, then or later, raises
    `EngineUnreachable` naming the engine; the engine's own refusals stay `APIError`s."""

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 60) -> None:
        # docker.DockerClient.__init__ is not called: it would open the connection now.
        self.url = url
        self._settings = {
            **engine_settings(),
            "timeout": int(timeout),
            "max_pool_size": max(pool_size, 10),
            # Without paramiko, ssh:// engines are reached through the ssh command.
            "use_ssh_client": importlib.util.find_spec("paramiko") is None,
        }
        self._api: docker.APIClient | None = None
        self._opening = threading.Lock()

    @property
    def api(self) -> docker.APIClient:  # type: ignore[override]
        if self._api is None:
            with self._opening:
                if self._api is None:
                    self._api = self._open()
        return self._api

    def _open(self) -> docker.APIClient:
        try:
            return _EngineApi(self.url, **self._settings)
        except EngineUnreachable:
            raise
        except (DockerException, RequestException, OSError) as exc:
            raise EngineUnreachable(self.url, unreachable_reason(exc)) from exc

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


class _EngineApi(docker.APIClient):
    def __init__(self, url: str, **settings: Any) -> None:
        self.engine_url = url  # set first: the SDK's __init__ already calls the engine
        super().__init__(**settings)

    def send(self, request: Any, **kwargs: Any) -> Any:  # every call to the engine passes here
        try:
            return super().send(request, **kwargs)
        except (RequestsConnectionError, ConnectionError, FileNotFoundError) as exc:
            raise EngineUnreachable(self.engine_url, unreachable_reason(exc)) from exc


def engine_said(exc: BaseException) -> str:
    """The engine's own words from an error, in one line."""
    explanation = getattr(exc, "explanation", None)  # an APIError's message from the engine
    text = str(explanation or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def unreachable_reason(exc: BaseException) -> str:
    """Why a connection to the engine failed, in a few words, from the deepest error it wraps."""
    causes = list(_chain(exc))
    for cause in causes:
        if isinstance(cause, FileNotFoundError):
            return "no engine is listening there (no such socket)"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (no engine is listening there)"
        if isinstance(cause, PermissionError):
            return "permission denied (run as root or join the docker group)"
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return "the engine closed the connection (it stopped or restarted)"
    text = " ".join(str(cause) for cause in causes)
    if "RemoteDisconnected" in text or "closed connection without response" in text:
        return "the engine closed the connection (it stopped or restarted)"
    if "No such file or directory" in text:
        return "no engine is listening there (no such socket)"
    if "Connection refused" in text:
        return "connection refused (no engine is listening there)"
    last = str(causes[-1]).strip() or type(causes[-1]).__name__
    return last.splitlines()[0][:200]


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: causes, contexts, and the errors urllib3 keeps in `reason`
    and in its arguments."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is known for known in seen):
            continue
        seen.append(current)
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        inner += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
        pending += [item for item in inner if isinstance(item, BaseException)]
    return seen
