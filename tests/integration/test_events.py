"""The event stream: `procguardctl events [-f]` from a second client against a real daemon (issue #18 item 1)."""

import json
import os
import pwd
import subprocess
import threading
from typing import Any

import pytest

from tests.helpers import DaemonRun, probe, prog, wait_until
from tests.integration.test_control_socket import _has, _run_as_nobody, needs_root, running



class Follower:
    """`procguardctl events -f --json` in its own process; collects the events it prints."""

    def __init__(self, d: DaemonRun, *names: str) -> None:
        self.proc = subprocess.Popen(d.ctl_argv("events", "-f", "--json", *names),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Events named `event` whose envelope or fields match every key of `match`."""
        return [e for e in list(self.events) if e["event"] == event
                and all(e.get(k, e["fields"].get(k)) == v for k, v in match.items())]

    def wait(self, event: str, **match: Any) -> dict[str, Any]:
        return wait_until(lambda: self.find(event, **match), 20,
                          f"{event} {match} in events -f; got {[e['event'] for e in self.events][-15:]}")[0]

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        self._reader.join(10)
        return err


def _config(d: DaemonRun, extra: str = "") -> str:
    flag = d.work / "healthy"
    return (prog("crashy", probe(d.work, "crashy"), startsecs=0)
            + prog("web", probe(d.work, "web"))
            + f'[program.web.healthcheck]\ntype = "exec"\ncommand = ["test", "-e", "{flag}"]\n'
              'interval = "200ms"\nretries = 1\non_unhealthy = "none"\n\n' + extra)


def test_events_follow_shows_a_crash_a_health_failure_and_a_reload_in_order(daemon):
    d = daemon()
    (d.work / "healthy").touch()
    d.write_config(_config(d))
    d.start()
    running(d, "crashy", "web")
    follower = Follower(d)
    try:
        follower.wait("daemon_started")  # the recent events come first: the stream is connected
        crashy_pid = d.status()["crashy"]["pid"]

        assert d.ctl("signal", "KILL", "crashy").returncode == 0
        crash = follower.wait("process_state_changed", process="crashy", new="EXITED")
        (d.work / "healthy").unlink()
        unhealthy = follower.wait("health_changed", process="web", new="unhealthy")
        d.write_config(_config(d, prog("extra", probe(d.work, "extra"), autostart=False)))
        assert d.ctl("reload").returncode == 0
        reloaded = follower.wait("config_reloaded", added=["extra"])
    finally:
        err = follower.close()
    # In the order they happened, with their fields.
    assert crash["seq"] < unhealthy["seq"] < reloaded["seq"], (crash, unhealthy, reloaded)
    assert crash["program"] == "crashy" and crash["pid"] == crashy_pid and crash["level"] == "warning"
    assert crash["fields"]["old"] == "RUNNING" and crash["fields"]["exit_status"] == -9
    assert crash["fields"]["expected"] is False and "SIGKILL" in crash["fields"]["exit"]
    assert unhealthy["program"] == "web" and unhealthy["fields"]["old"] == "healthy"
    assert unhealthy["fields"]["reason"] and unhealthy["pid"] == d.status()["web"]["pid"]
    assert reloaded["program"] is None and reloaded["fields"] == {"added": ["extra"], "changed": [], "removed": []}
    seqs = [e["seq"] for e in follower.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "events out of order or repeated"
    assert not err.strip(), err

    # Without -f: the recent events of one program, as text, oldest first.
    r = d.ctl("events", "crashy")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if " process_state_changed " in line]
    assert lines and all(" crashy" in line for line in lines), r.stdout
    assert any(f"crashy pid {crashy_pid} process_state_changed old=RUNNING new=EXITED" in line
               and "exit_status=-9 expected=false" in line for line in lines), r.stdout
    assert "health_changed" not in r.stdout and "config_reloaded" not in r.stdout
    # --json and -n: the last N as JSON lines.
    r = d.ctl("events", "--json", "-n", "2", "web")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(got) == 2 and all(e["program"] == "web" for e in got), r.stdout
    assert got[-1]["event"] == "health_changed"


def test_events_follow_ends_with_a_reason_when_the_daemon_stops(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    follower = Follower(d, "web")
    follower.wait("process_state_changed", process="web", new="RUNNING")
    assert d.ctl("shutdown").returncode == 0
    follower.wait("process_state_changed", process="web", new="STOPPED")
    follower.proc.wait(20)
    _, err = follower.proc.communicate()
    assert follower.proc.returncode == 0 and "procguard is shutting down" in err, err
    assert not follower.find("shutdown_requested"), "a daemon-wide event passed a names filter"


def test_deploy_steps_show_up_in_events_follow(daemon):
    # test_deploy's set-up: a test server on a held socket, reading its release from a file.
    from tests.integration.test_deploy import release, serving_v1

    d, _ = serving_v1(daemon)
    follower = Follower(d, "web")
    try:
        follower.wait("process_state_changed", process="web", new="RUNNING")  # the stream is connected
        release(d, "v2")
        r = d.ctl("deploy", "web")
        assert r.returncode == 0, r.stdout + r.stderr
        done = follower.wait("deploy_succeeded", program="web")
    finally:
        follower.close()
    started = follower.find("deploy_started", program="web")
    steps = follower.find("deploy_step", program="web")
    assert started and steps, [e["event"] for e in follower.events]
    assert started[0]["seq"] < min(s["seq"] for s in steps) <= max(s["seq"] for s in steps) < done["seq"]
    assert all(s["fields"].get("step") for s in steps) and done["process"] == "web"


@needs_root
@pytest.mark.skipif(not _has("nobody", "nogroup"), reason="needs the nobody user and nogroup group")
def test_an_unauthorised_uid_gets_no_events(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    os.chmod(d.endpoint[len("ipc://"):], 0o666)  # past the file mode: ZAP alone must refuse
    code, out = _run_as_nobody(["-s", d.endpoint, "events", "-f"])
    assert code == 4 and "not authorised" in out, out
    assert "process_state_changed" not in out and "daemon_started" not in out, out
    [ev] = d.events("control_peer_refused")
    assert ev["uid"] == pwd.getpwnam("nobody").pw_uid


def test_dropped_output_is_one_event_per_episode(daemon):
    d = daemon()
    d.write_config(prog("noisy", ["sh", "-c", "while :; do echo line; sleep 0.02; done"], startsecs=0,
                        stdout_logfile="/dev/full"))  # every write fails: ENOSPC
    d.start()
    running(d, "noisy")
    wait_until(lambda: d.status()["noisy"]["output_dropped_bytes"] > 100, 20, "bytes dropped")
    r = d.ctl("events", "--json", "noisy")
    dropped = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "output_dropped"]
    assert len(dropped) == 1, r.stdout  # one per episode, not one per write
    assert dropped[0]["process"] == "noisy" and dropped[0]["level"] == "warning"
    assert dropped[0]["fields"]["cause"] == "write_failed" and dropped[0]["fields"]["path"] == "/dev/full"
    assert dropped[0]["fields"]["stream"] == "stdout" and dropped[0]["fields"]["dropped_bytes"] > 0
