"""procguard.testing.RealDaemon, the real-daemon harness tests and benchmarks share (issue #15).

It must find what a daemon started even when the daemon could not stop it: otherwise every test's
"nothing survives" check would pass on a leak.
"""

from pathlib import Path

from procguard.testing import RealDaemon
from tests.helpers import alive, prog, wait_until


def running_pid(d: RealDaemon, name: str) -> int:
    def pid() -> int | None:
        reply = d.request("status", {"names": [name]})
        assert reply["ok"], reply
        [row] = reply["result"]
        return int(row["pid"]) if row["state"] == "RUNNING" else None

    return wait_until(pid, what=f"{name} RUNNING")


def test_real_daemon_serves_its_socket_stops_clean_and_reports_what_survives_a_crash(tmp_path: Path) -> None:
    config = tmp_path / "procguard.toml"
    config.write_text(f'[procguard]\nlogdir = "{tmp_path}/logs"\ncontrol = "ipc://{tmp_path}/control.sock"\n\n'
                      + prog("web", ["sleep", "3600"], startsecs=0))
    d = RealDaemon(config)
    try:
        d.start()
        assert d.endpoint == f"ipc://{tmp_path}/control.sock"  # read from the config
        first = running_pid(d, "web")
        r = d.ctl("pid", "web")
        assert (r.returncode, r.stdout) == (0, f"{first}\n"), r.stderr
        assert d.stop() == 0 and not alive(first)
        assert d.close() == []

        d.start()  # the same daemon again, then killed: it cannot stop its child
        second = running_pid(d, "web")
        assert second != first
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        assert alive(second)
    finally:
        left = d.close()
    assert left == [second] and not alive(second)
