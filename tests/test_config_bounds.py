"""What a config may not do, whatever its dialect: hold a key twice, set limits past what the
runtime can honour, expand aliases without end, or be bigger than 10MB. Each is refused by
`toka validate` as one line naming the file (and, where there is one, the key path and line)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_toka, write_config

from toka_agents import validate

TOKA_SPECS = REPO / "tests" / "data" / "toka-specs"


def problems(*paths: Path) -> list[str]:
    return [str(issue) for issue in validate(paths).issues]


def config(tmp_path: Path, body: str, name: str = "config.yaml") -> Path:
    return write_config(tmp_path, textwrap.dedent(body).lstrip(), name)


def validate_cli(path: Path) -> tuple[int, list[str]]:
    """`toka validate`'s exit code and the problem lines it printed."""
    done = run_toka("validate", str(path))
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(str(path))]
    return done.returncode, lines


# --- Duplicated keys ----------------------------------------------------------------------


def test_duplicated_key_in_native_yaml_names_its_path_and_both_lines(tmp_path):
    path = config(
        tmp_path,
        """
        name: twice
        agents:
          - name: a
            tasks:
              - name: t
                code: {language: shell, source: "true"}
            name: b
        """,
    )
    code, lines = validate_cli(path)
    assert code == 1
    assert lines == [f"{path}: agents.0.name: duplicated key at line 7 (first at line 3)"]


def test_merge_keys_still_override_without_being_duplicates(tmp_path):
    merged = config(
        tmp_path,
        """
        name: merged
        defaults: {retries: 0}
        base: &base {name: a, retries: 1}
        agents:
          - <<: *base
            retries: 2
            tasks: [{name: t, code: {language: shell, source: "true"}}]
        """,
        "merged.yaml",
    )
    # `base` is no key of the format; what matters is that `retries` is not reported twice.
    assert problems(merged) == [
        f"{merged}: base: unknown key (`toka schema` lists the keys of the format)"
    ]
    twice = config(tmp_path, "name: x\nname: y\nagents: []\n", "twice.yaml")
    assert problems(twice) == [f"{twice}: name: duplicated key at line 2 (first at line 1)"]


def test_duplicated_key_in_a_toka_spec_names_its_path_and_both_lines(tmp_path):
    original = TOKA_SPECS / "v0.3" / "build-system-stabilization.yaml"
    lines = original.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("spec:"))
    first = next(i for i in range(at, len(lines)) if lines[i].startswith("  priority:"))
    lines.insert(first + 1, "  priority: low")
    path = tmp_path / original.name
    path.write_text("\n".join(lines) + "\n")
    code, printed = validate_cli(path)
    assert code == 1
    assert printed == [
        f"{path}: spec.priority: duplicated key at line {first + 2} (first at line {first + 1})"
    ]


# --- Limits past what the runtime can honour ----------------------------------------------

NATIVE_LIMIT = """
name: limits
{settings}
agents:
  - name: a
    limits: {{{key}: {value}}}
    tasks:
      - name: t
        code: {{language: shell, source: "true"}}
"""


@pytest.mark.parametrize(
    ("key", "at_most", "over", "message"),
    [
        ("timeout", "30d", "31d", "timeout 31d is over 30d, the longest toka-agents allows (got '31d')"),
        (
            "timeout",
            "2592000",
            "99999999999d",
            "timeout 99999999999d is over 30d, the longest toka-agents allows (got '99999999999d')",
        ),
        (
            "memory",
            "1TB",
            "2TB",
            "memory 2TB is over 1TB, the most toka-agents gives a sandbox (got '2TB')",
        ),
        (
            "workspace",
            "16TB",
            "17TB",
            "workspace 17TB is over 16TB, the largest an ext4 workspace can be (got '17TB')",
        ),
        (
            "cpu",
            "1024 cores",
            "1025 cores",
            "cpu 1025 cores is over 1024 cores, the most toka-agents gives a sandbox (got '1025 cores')",
        ),
        ("pids", "4194304", "4194305", "pids 4194305 is over 4194304, Linux's largest process limit"),
    ],
)
def test_each_limit_has_an_upper_bound_named_in_one_line(tmp_path, key, at_most, over, message):
    fits = config(tmp_path, NATIVE_LIMIT.format(settings="", key=key, value=at_most), "fits.yaml")
    assert problems(fits) == []
    beyond = config(tmp_path, NATIVE_LIMIT.format(settings="", key=key, value=over), "over.yaml")
    assert problems(beyond) == [f"{beyond}: agents.0.limits.{key}: {message}"]


def test_a_timeout_that_would_overflow_is_refused_by_toka_validate(tmp_path):
    path = config(tmp_path, NATIVE_LIMIT.format(settings="", key="timeout", value="99999999999d"))
    code, lines = validate_cli(path)
    assert code == 1
    assert lines == [
        f"{path}: agents.0.limits.timeout: timeout 99999999999d is over 30d, the longest "
        "toka-agents allows (got '99999999999d')"
    ]


def test_llm_timeout_is_bounded_too(tmp_path):
    settings = "llm: {provider: openai, model: m, timeout: 31d}"
    path = config(tmp_path, NATIVE_LIMIT.format(settings=settings, key="pids", value="64"))
    assert problems(path) == [
        f"{path}: llm.timeout: timeout 31d is over 30d, the longest toka-agents allows (got '31d')"
    ]


def test_toka_toml_limits_are_bounded_where_toka_writes_them(tmp_path):
    path = config(
        tmp_path,
        """
        [orchestration]
        max_concurrent_agents = 2

        [security.resource_limits]
        max_memory = "2TB"

        [[agents]]
        name = "a"
        [agents.tasks]
        default = [{description = "Do it."}]
        """,
        "orchestration.toml",
    )
    assert problems(path) == [
        f"{path}: security.resource_limits.max_memory: memory 2TB is over 1TB, the most "
        "toka-agents gives a sandbox (got '2TB')"
    ]


# --- Alias bombs and big files ------------------------------------------------------------

BILLION_LAUGHS = """
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
agents: *i
"""


def test_an_alias_bomb_is_one_line(tmp_path):
    path = config(tmp_path, BILLION_LAUGHS)
    code, lines = validate_cli(path)
    assert code == 1
    assert len(lines) == 1 and "too many aliases" in lines[0], lines


def test_an_alias_bomb_in_a_toka_spec_is_one_line(tmp_path):
    bomb = "metadata: {name: bomb}\nspec: {priority: high}\n" + BILLION_LAUGHS.replace(
        "agents: *i", "tasks: {default: *i}"
    )
    path = config(tmp_path, bomb, "spec.yaml")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: too many aliases")


def test_a_recursive_anchor_is_too_many_aliases(tmp_path):
    path = config(tmp_path, "name: loop\nagents: &loop [*loop]\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: too many aliases")


@pytest.mark.parametrize("name", ["big.yaml", "big.toml"])
def test_a_file_over_10mb_is_refused_before_it_is_parsed(tmp_path, name):
    path = tmp_path / name
    comment = "#" + "x" * 1023 + "\n"
    path.write_text(comment * (10 * 1024 + 512))  # 10.5MB
    assert problems(path) == [f"{path}: the file is 10.5MB, over the 10MB a config may be"]


def test_a_big_file_in_a_directory_is_refused_with_the_others_read(tmp_path):
    config(tmp_path, NATIVE_LIMIT.format(settings="", key="pids", value="64"), "a.yaml")
    (tmp_path / "b.yaml").write_text("#" * (11 * 1024**2) + "\n")
    checked = validate([tmp_path])
    assert [str(issue) for issue in checked.issues] == [
        f"{tmp_path / 'b.yaml'}: the file is 11MB, over the 10MB a config may be"
    ]
