"""`[procguard] metrics` and `metrics_public` (issue #18 item 3): off by default, loopback unless told."""

from pathlib import Path

import pytest

from procguard.config.model import MetricsConfig
from tests.unit.test_config import load, main_file, refusal


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "[procguard]\n").metrics is None


@pytest.mark.parametrize("value, host, port", [
    ("127.0.0.1:9101", "127.0.0.1", 9101),
    ("localhost:9101", "127.0.0.1", 9101),
    ("[::1]:9101", "::1", 9101),
    ("127.0.0.2:0", "127.0.0.2", 0),
])
def test_a_loopback_address_is_accepted(tmp_path: Path, value: str, host: str, port: int) -> None:
    config = load(tmp_path, f'[procguard]\nmetrics = "{value}"\n')
    assert config.metrics == MetricsConfig(host=host, port=port)


def test_a_unix_socket_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    assert load(tmp_path, '[procguard]\nmetrics = "run/metrics.sock"\n').metrics == \
        MetricsConfig(path=str(tmp_path / "run/metrics.sock"))
    assert load(tmp_path, '[procguard]\nmetrics = "unix:/run/pg/m.sock"\n').metrics == MetricsConfig(path="/run/pg/m.sock")


@pytest.mark.parametrize("value", ["0.0.0.0:9101", ":9101", "[::]:9101", "192.0.2.7:9101"])
def test_listening_beyond_loopback_is_refused_without_metrics_public(tmp_path: Path, value: str) -> None:
    [line] = refusal(tmp_path, f'[procguard]\nmetrics = "{value}"\n')
    assert line.startswith(f"{main_file(tmp_path)}: [procguard] metrics: {value!r} listens beyond loopback")
    assert "metrics_public = true" in line


def test_metrics_public_allows_any_address(tmp_path: Path) -> None:
    config = load(tmp_path, '[procguard]\nmetrics = "0.0.0.0:9101"\nmetrics_public = true\n')
    assert config.metrics == MetricsConfig(host="0.0.0.0", port=9101, public=True)


def test_bad_metrics_values_are_named(tmp_path: Path) -> None:
    f = main_file(tmp_path)
    for value in ('"web:9101"', '"127.0.0.1"', '"127.0.0.1:99999"', "9101"):
        [line] = refusal(tmp_path, f"[procguard]\nmetrics = {value}\n")
        assert line.startswith(f'{f}: [procguard] metrics: expected "127.0.0.1:PORT"'), line
    [line] = refusal(tmp_path, '[procguard]\nmetrics = "127.0.0.1:9101"\nmetrics_public = "yes"\n')
    assert line == f"{f}: [procguard] metrics_public: expected true or false, got 'yes'"
