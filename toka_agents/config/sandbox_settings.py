"""How a run's sandbox containers are set up (`sandbox:` of a config): the Docker network that
agents with a network capability join, and the warm pool."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from toka_agents.config.base import ConfigModel

_DOCKER_NETWORK_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _bridge_network_name(name: str) -> str:
    if not _DOCKER_NETWORK_PATTERN.fullmatch(name) or len(name) > 128:
        raise ValueError(
            f"{name!r} is not a Docker network name: letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    if name in ("host", "none"):
        raise ValueError(
            f"network {name!r} is refused: agents join a bridge network of their own, "
            "such as 'bridge' (the default) or one made with `docker network create`"
        )
    return name


DockerNetwork = Annotated[str, AfterValidator(_bridge_network_name)]


class SandboxSettings(ConfigModel):
    """How the run's sandbox containers are set up."""

    network: DockerNetwork = Field(
        "bridge",
        description="The Docker network that agents with a network capability join; agents "
        "without one have no network at all.",
    )
    pool_size: int | None = Field(
        None,
        ge=0,
        description="Containers kept started ahead of demand, waiting for code, per combination "
        "of image, limits and capabilities; each serves one task and is destroyed. Default: "
        "`max_concurrent_agents`; 0 starts a fresh container for every task.",
    )
