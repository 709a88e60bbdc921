import signal
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import DaemonRun

# A runner started as a non-interactive shell's background job (`bash .ci/run &`) ignores INT and QUIT,
# and every process the tests start would inherit that (exec keeps ignored signals): procguardctl
# `tail -f` would not stop on SIGINT. The tests check default behaviour, so they start from it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


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
