from collections.abc import Callable, Iterator

import pytest

from tests.helpers import DaemonRun


@pytest.fixture
def daemon() -> Iterator[Callable[[str], DaemonRun]]:
    """Factory for real daemons; every one is stopped and its children proven gone at teardown."""
    runs: list[DaemonRun] = []

    def make(config_text: str = "") -> DaemonRun:
        run = DaemonRun(config_text)
        runs.append(run)
        return run

    yield make
    survivors = {str(r.work): r.cleanup() for r in runs}
    leaked = {k: v for k, v in survivors.items() if v}
    assert not leaked, f"processes survived their test (killed now): {leaked}"
