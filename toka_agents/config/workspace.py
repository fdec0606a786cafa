"""A run's workspace in the config: what seeds it (`workspace:`) and what of it is handed back
(`outputs:`).

`workspace: {from: PATH}` copies a directory of the machine that runs the flow into the
workspace before the first task; `workspace: {git: URL, ref: REF}` clones a repository there.
Either may use inputs (`from: "{repo}"`). `outputs:` names files of the workspace (paths or
globs, each optionally with a title) that become the run's artifacts when it ends.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class WorkspaceSeed(BaseModel):
    """What the workspace holds before the first task: a directory's copy or a git clone."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str | None = Field(
        None,
        alias="from",
        description="A directory on the machine that runs the flow, copied in (never mounted, "
        "never written back). Relative: to the config file's directory.",
    )
    git: str | None = Field(None, description="A git repository's URL or path, cloned in.")
    ref: str | None = Field(
        None, description="With `git`: the branch, tag or commit to check out (default: its HEAD)."
    )
    exclude: list[str] = Field(
        [],
        description="Names or relative paths not copied in, as shell globs: `.venv`, `*.pyc`, "
        "`build/*`.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> WorkspaceSeed:
        if (self.from_ is None) == (self.git is None):
            raise ValueError("give `from` (a directory) or `git` (a repository), one of them")
        if self.ref is not None and self.git is None:
            raise ValueError("`ref` goes with `git`")
        for name, value in (("git", self.git), ("ref", self.ref)):
            if value is not None and value.lstrip().startswith("-"):
                raise ValueError(f"`{name}` {value!r} starts with '-'")
        return self

    @property
    def source(self) -> str:
        """The directory or repository, as the config (filled) says it."""
        return (
            self.from_
            if self.from_ is not None
            else f"{self.git}" + (f" at {self.ref}" if self.ref else "")
        )


def _output_from_text(value: object) -> object:
    return {"path": value} if isinstance(value, str) else value


class Output(BaseModel):
    """A file (or a glob of files) of the workspace handed back as an artifact of the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        min_length=1,
        description="Relative to the workspace; `*`, `?` and `**` match as in a shell glob.",
    )
    title: str | None = Field(None, description="The artifact's description; default: the path.")

    @model_validator(mode="after")
    def _inside_workspace(self) -> Output:
        parts = self.path.replace("\\", "/").split("/")
        if self.path.startswith("/") or ".." in parts:
            raise ValueError(
                f"{self.path!r} is not inside the workspace: give a relative path without '..'"
            )
        return self


OutputEntry = Annotated[Output, BeforeValidator(_output_from_text)]
