"""The LLM settings of Toka's orchestration TOML: `[llm]` keys that are settings become settings,
Toka's `rate_limit` is the requests per minute, and the rest is kept in `options`."""

from __future__ import annotations

from test_toka_specs import SPECS

from toka_agents import load
from toka_agents.planning import validate


def test_tokas_llm_table_becomes_llm_settings(tmp_path):
    settings = load(SPECS / "config" / "agents.toml").llm
    assert (settings.provider, settings.model, settings.timeout) == (
        "anthropic",
        "claude-3-5-sonnet-20241022",
        30,
    )
    assert settings.requests_per_minute == 50
    assert settings.options == {"rate_limit": 50, "debug_mode": False}  # kept as written


def test_llm_keys_of_the_settings_land_in_the_settings_not_in_options(tmp_path):
    path = tmp_path / "orchestration.toml"
    path.write_text(
        "[orchestration]\nmax_concurrent_agents = 2\n"
        '[llm]\nprovider = "openai"\nmodel = "m"\nmax_tokens = 1000\nmax_steps = 5\n'
        "price_per_million_tokens = {input = 1.0, output = 2.0}\nseed = 7\n"
        '[[agents]]\nname = "a"\n[agents.tasks]\ndefault = [{description = "Think."}]\n'
    )
    settings = load(path).llm
    assert (settings.max_tokens, settings.max_steps, settings.price_per_million_tokens.output) == (
        1000,
        5,
        2.0,
    )
    assert settings.options == {"seed": 7}


def test_a_bad_llm_value_is_named_at_its_key(tmp_path):
    path = tmp_path / "orchestration.toml"
    path.write_text(
        '[llm]\nprovider = "openai"\nmodel = "m"\nmax_steps = 0\n'
        '[[agents]]\nname = "a"\n[agents.tasks]\ndefault = [{description = "Think."}]\n'
    )
    [issue] = validate([path]).issues
    assert str(issue).startswith(f"{path}: llm.max_steps: ") and "greater than 0" in str(issue)
