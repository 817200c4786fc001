"""`magistral-runtime front` flags: defaults, and every bad value refused naming its flag."""

from __future__ import annotations

import pytest

from magistral_runtime.cli import main
from magistral_runtime.front.config import (
    DEFAULTS,
    FrontConfig,
    FrontConfigError,
    parse_front_args,
)


def test_defaults_are_the_router_pods() -> None:
    config = parse_front_args([])
    assert config == FrontConfig()
    assert (config.host, config.port, config.demand_port) == ("0.0.0.0", 8000, 9090)
    assert config.router_url == "http://127.0.0.1:8001"
    assert (config.max_num_seqs, config.router_replicas) == (256, 2)
    assert (config.hold_timeout_seconds, config.retry_after_seconds) == (300.0, 30)
    assert (config.max_body_bytes, config.drain_seconds) == (32 * 1024 * 1024, 30.0)


def test_the_operators_command_line_parses() -> None:
    config = parse_front_args(
        [
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--demand-port",
            "9090",
            "--router-url",
            "http://127.0.0.1:8001/",
            "--max-num-seqs",
            "64",
            "--router-replicas",
            "3",
            "--hold-timeout-seconds",
            "600",
            "--retry-after-seconds",
            "10",
            "--drain-seconds",
            "0",
            "--log-level",
            "DEBUG",
        ]
    )
    assert config.router_url == "http://127.0.0.1:8001"
    assert (config.max_num_seqs, config.router_replicas) == (64, 3)
    assert (config.hold_timeout_seconds, config.retry_after_seconds) == (600.0, 10)
    assert (config.drain_seconds, config.log_level) == (0.0, "debug")
    assert config.max_body_bytes == DEFAULTS.max_body_bytes


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "0"], "--port: must be between 1 and 65535, got 0"),
        (["--port", "http"], "--port: expected an integer, got 'http'"),
        (["--demand-port", "70000"], "--demand-port: must be between 1 and 65535"),
        (["--demand-port", "8000"], "--demand-port: must differ from --port (8000)"),
        (["--host", "localhost"], "--host: expected an IP address, got 'localhost'"),
        (["--router-url", "127.0.0.1:8001"], "--router-url: expected http://host:port"),
        (["--router-url", "https://127.0.0.1:8001"], "--router-url: expected http://host:port"),
        (["--router-url", "http://127.0.0.1"], "--router-url: expected http://host:port"),
        (["--router-url", "http://127.0.0.1:8001/v1"], "--router-url: expected http://host:port"),
        (["--router-url", "http://127.0.0.1:99999"], "--router-url: expected http://host:port"),
        (["--max-num-seqs", "0"], "--max-num-seqs: must be at least 1, got 0"),
        (["--max-num-seqs", "1.5"], "--max-num-seqs: expected an integer, got '1.5'"),
        (["--router-replicas", "0"], "--router-replicas: must be at least 1, got 0"),
        (["--hold-timeout-seconds", "0"], "--hold-timeout-seconds: must be a positive"),
        (["--hold-timeout-seconds", "nan"], "--hold-timeout-seconds: must be a positive"),
        (["--hold-timeout-seconds", "soon"], "--hold-timeout-seconds: expected a number"),
        (["--retry-after-seconds", "-1"], "--retry-after-seconds: must be at least 0, got -1"),
        (["--retry-after-seconds", "2.5"], "--retry-after-seconds: expected an integer"),
        (["--max-body-bytes", "0"], "--max-body-bytes: must be at least 1, got 0"),
        (["--drain-seconds", "-1"], "--drain-seconds: must be a non-negative"),
        (["--drain-seconds", "inf"], "--drain-seconds: must be a non-negative"),
        (["--poll-interval-seconds", "0"], "--poll-interval-seconds: must be a positive"),
        (["--log-level", "verbose"], "--log-level: expected one of debug, info, warning"),
    ],
)
def test_bad_values_name_their_flag(flags: list[str], message: str) -> None:
    with pytest.raises(FrontConfigError) as caught:
        parse_front_args(flags)
    assert str(caught.value).startswith(message)


def test_cli_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["front", "--router-replicas", "none"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "magistral-runtime: --router-replicas: expected an integer, got 'none'" in err
