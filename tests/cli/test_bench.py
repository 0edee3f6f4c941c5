"""``backchannel bench``, as a process against a real ``backchannel serve``: small
numbers, both transports."""

from __future__ import annotations

import json

import pytest
from helpers.cli import API_KEY, SECRET, clean_env, one_line_error, run_cli, usage_error

from backchannel.cli.bench import Tally, percentile, summary


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_bench_delivers_every_publication_and_reports_latencies(hub: str, transport: str) -> None:
    result = run_cli(
        *("bench", "--url", hub, "--clients", "4", "--channels", "2"),
        *("--rate", "20", "--duration", "0.5", "--transport", transport, "--json"),
        env=clean_env(BACKCHANNEL_AUTH_SECRET=SECRET, BACKCHANNEL_API_KEY=API_KEY),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["published"] == 10 and report["errors"] == 0
    # Two clients in each channel: every publication is delivered twice.
    assert report["deliveries"] == report["expected_deliveries"] == 20
    assert report["deliveries_per_second"] > 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]


def test_bench_prints_a_summary_in_words(hub: str) -> None:
    result = run_cli(
        *("bench", "--url", hub, "--clients", "2", "--rate", "10", "--duration", "0.3"),
        env=clean_env(BACKCHANNEL_AUTH_SECRET=SECRET, BACKCHANNEL_API_KEY=API_KEY),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 clients in 1 channels") and "0 errors" in lines[0]
    assert lines[1].startswith("deliveries: 6 of 6, ")
    assert lines[2].startswith("latency: p50 ") and "p99" in lines[2]


def test_bench_without_the_servers_secret_is_one_line(hub: str) -> None:
    result = run_cli("bench", "--url", hub, env=clean_env(BACKCHANNEL_API_KEY=API_KEY))
    assert result.returncode == 2
    assert "BACKCHANNEL_AUTH_SECRET" in one_line_error(result)


def test_bench_bounds_its_numbers() -> None:
    assert "is not a number of clients" in usage_error(run_cli("bench", "--clients", "1001"))
    assert "is not a rate" in usage_error(run_cli("bench", "--rate", "0"))


def test_percentiles_and_summary() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)
    assert percentile([], 0.5) == 0.0
    tally = Tally(sent=3, expected=6, delivered=6, latencies=[0.001, 0.002, 0.003])
    report = summary(tally, 2.0, clients=2, channels=1)
    assert report["deliveries_per_second"] == 3.0
    assert report["latency_ms"] == {"p50": 2.0, "p90": 3.0, "p99": 3.0}
