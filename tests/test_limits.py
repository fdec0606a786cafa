"""The limits grammar: memory, cpu and durations, good and bad."""

import pytest

from toka_agents.config.limits import (
    format_bytes,
    format_seconds,
    parse_cpu,
    parse_duration,
    parse_memory,
)

MB = 1024**2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * MB),
        ("512mb", 512 * MB),
        ("1GB", 1024 * MB),
        ("1gB", 1024 * MB),
        ("2 KB", 2048),
        ("64KiB", 64 * 1024),
        ("1TB", 1024**4),
        ("100B", 100),
        ("0.5GB", 512 * MB),
        (1048576, MB),
        ("1048576", MB),
    ],
)
def test_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("75%", 0.75),
        ("50 %", 0.5),
        ("0.5", 0.5),
        (0.25, 0.25),
        ("1", 1.0),
        ("75", 0.75),
        (150, 1.5),
        ("1 core", 1.0),
        ("2 cores", 2.0),
        ("1.5 Cores", 1.5),
    ],
)
def test_cpu(text, expected):
    assert parse_cpu(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("250ms", 0.25),
        ("1800", 1800),
        (1800, 1800),
        ("1.5h", 5400),
        ("10 S", 10),
    ],
)
def test_duration(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["12XB", "lots", "", "-5MB", "0MB", True, "5 M B"])
def test_bad_memory_names_the_value(bad):
    with pytest.raises(ValueError) as info:
        parse_memory(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["fast", "0%", "-1", "two cores", "", False])
def test_bad_cpu_names_the_value(bad):
    with pytest.raises(ValueError) as info:
        parse_cpu(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["soon", "5w", "0s", "-3s", "", "1h30m", None])
def test_bad_duration_names_the_value(bad):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert repr(bad) in str(info.value)


def test_formatting_round_trips():
    for size in (100, 2048, 256 * MB, 1024 * MB):
        assert parse_memory(format_bytes(size)) == size
    for seconds in (0.25, 5, 60, 5400, 86400):
        assert parse_duration(format_seconds(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("parse", "value"),
    [
        (parse_memory, 10**400),
        (parse_memory, float("inf")),
        (parse_memory, "9" * 400 + "MB"),
        (parse_duration, 10**400),
        (parse_duration, float("nan")),
        (parse_duration, "1" + "0" * 400),
        (parse_cpu, "9" * 400 + "%"),
    ],
)
def test_numbers_a_float_cannot_hold_are_errors(parse, value):
    with pytest.raises(ValueError, match="too large"):
        parse(value)
