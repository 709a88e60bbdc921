"""Prometheus metrics over HTTP from a real daemon, parsed with prometheus_client's own parser (issue #18 item 3)."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DaemonRun, free_port, probe, prog, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metrics_address(d: DaemonRun) -> str:
    return str(wait_until(lambda: d.events("metrics_listening"), what="metrics_listening")[0]["address"])


def scrape(address: str, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(reply.read().decode())


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def proc_files_open(holder: int, pid: int) -> list[str]:
    """holder's descriptors open on pid's /proc files."""
    out = []
    for fd in os.listdir(f"/proc/{holder}/fd"):
        try:
            target = os.readlink(f"/proc/{holder}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith(f"/proc/{pid}/"):
            out.append(target)
    return out


def test_metrics_show_each_process_as_proc_sees_it_and_follow_a_crash(daemon: Callable[[str], DaemonRun]) -> None:
    d = daemon("")
    talk = "import sys, time; sys.stdout.write('hello metrics\\n'); sys.stdout.flush(); time.sleep(1000)"
    d.write_config(
        f'[procguard]\nlogdir = "{d.work}/logs"\ncontrol = "{d.endpoint}"\nmetrics = "127.0.0.1:0"\n\n'
        + prog("web", probe(d.work, "web"), startsecs=0, backoff_initial="0.1s")
        + prog("talker", [sys.executable, "-c", talk], startsecs=0)
        + prog("crasher", probe(d.work, "crasher", "exit", code=3, after=0.3), startsecs=0, autorestart=False)
    )
    d.start()
    address = metrics_address(d)
    web = d.wait_reports("web")[0]
    d.wait_state("crasher", "EXITED")

    def talker_wrote() -> Samples:
        m = scrape(address)
        return m if value(m, "procguard_process_output_bytes_total", program="talker", process="talker",
                          stream="stdout") == len("hello metrics\n") else {}

    m = wait_until(talker_wrote, what="talker's 14 bytes of output in the metrics")
    # web: what the kernel says about its pid.
    web_labels = {"program": "web", "process": "web"}
    assert value(m, "procguard_process_pid", **web_labels) == web["pid"]
    assert value(m, "procguard_process_state", state="RUNNING", **web_labels) == 1
    assert value(m, "procguard_process_up", **web_labels) == 1
    rss = value(m, "procguard_process_resident_memory_bytes", **web_labels)
    assert rss is not None and 0.5 < rss / proc_rss(web["pid"]) < 2, (rss, proc_rss(web["pid"]))
    fds = value(m, "procguard_process_open_fds", **web_labels)
    assert fds is not None and abs(fds - len(os.listdir(f"/proc/{web['pid']}/fd"))) <= 1
    assert value(m, "procguard_process_cpu_seconds_total", **web_labels) is not None
    start = value(m, "procguard_process_start_time_seconds", **web_labels)
    assert start is not None and abs(start - os.stat(f"/proc/{web['pid']}").st_ctime) < 5
    assert value(m, "procguard_process_restarts_total", **web_labels) == 0
    # crasher: exited with 3 once, was not restarted (autorestart = false), is down.
    crasher = {"program": "crasher", "process": "crasher"}
    assert value(m, "procguard_process_state", state="EXITED", **crasher) == 1
    assert value(m, "procguard_process_up", **crasher) == 0
    assert value(m, "procguard_process_exits_total", reason="unexpected", **crasher) == 1
    assert value(m, "procguard_process_pid", **crasher) is None
    assert value(m, "procguard_processes", state="RUNNING") == 2
    assert value(m, "procguard_processes", state="EXITED") == 1
    # The daemon itself.
    assert d.proc is not None
    daemon_rss = value(m, "procguard_daemon_resident_memory_bytes")
    assert daemon_rss is not None and 0.5 < daemon_rss / proc_rss(d.proc.pid) < 2
    assert value(m, "procguard_daemon_cpu_seconds_total") is not None
    lag = value(m, "procguard_daemon_event_loop_lag_seconds")
    assert lag is not None and lag >= 0

    # A crash of web (SIGKILL): counted as a signal exit and a restart; a new pid comes up.
    os.kill(web["pid"], signal.SIGKILL)
    second = d.wait_reports("web", count=2)[1]

    def restarted() -> Samples:
        m = scrape(address)
        return m if value(m, "procguard_process_pid", **web_labels) == second["pid"] else {}

    m = wait_until(restarted, what="web's new pid in the metrics")
    assert value(m, "procguard_process_restarts_total", **web_labels) == 1
    # A scrape keeps each process's /proc files open for the next (issue #18), and closes those of a process gone.
    assert proc_files_open(d.proc.pid, second["pid"]) and proc_files_open(d.proc.pid, web["pid"]) == []
    assert value(m, "procguard_process_exits_total", reason="signal", **web_labels) == 1
    assert value(m, "procguard_process_state", state="RUNNING", **web_labels) == 1

    # Control requests, by command and outcome.
    assert d.ctl("status", "web").returncode == 0
    assert d.ctl("status", "nosuch").returncode == 4  # supervisorctl: no such process (#14)
    m = scrape(address)
    assert value(m, "procguard_daemon_control_requests_total", command="status", outcome="ok") == 1
    assert value(m, "procguard_daemon_control_requests_total", command="status", outcome="no_such_process") == 1
    scrape_s = value(m, "procguard_metrics_scrape_seconds")
    assert scrape_s is not None and scrape_s > 0

    # Only /metrics; only GET and HEAD.
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{address}/nope", timeout=30)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(f"http://{address}/metrics", data=b"x"), timeout=30)
    assert posted.value.code == 405


def test_metrics_on_a_unix_socket(daemon: Callable[[str], DaemonRun]) -> None:
    d = daemon("")
    path = d.work / "metrics.sock"
    d.write_config(f'[procguard]\nlogdir = "{d.work}/logs"\ncontrol = "{d.endpoint}"\nmetrics = "{path}"\n\n'
                   + prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    pid = d.wait_reports("web")[0]["pid"]
    d.wait_state("web", "RUNNING")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: procguard\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert value(parse(body.decode()), "procguard_process_pid", program="web", process="web") == pid
    # A reload keeps the endpoint where it is and says that a new one needs a restart.
    d.config.write_text(d.config.read_text().replace(str(path), str(d.work / "other.sock")))
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.events("metrics_change_needs_restart"), what="metrics_change_needs_restart")
    assert path.exists() and not (d.work / "other.sock").exists()
    assert d.stop() == 0
    assert not path.exists()


def test_metrics_beyond_loopback_are_refused_unless_public(tmp_path: Path) -> None:
    config = tmp_path / "procguard.toml"
    config.write_text(f'[procguard]\nlogdir = "{tmp_path}/logs"\ncontrol = "ipc://{tmp_path}/c.sock"\n'
                      'metrics = "0.0.0.0:0"\n')
    run = subprocess.run([sys.executable, "-m", "procguard", "-c", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1
    assert f"{config}: [procguard] metrics: '0.0.0.0:0' listens beyond loopback" in run.stderr
    assert "metrics_public = true" in run.stderr
    config.write_text(config.read_text() + "metrics_public = true\n")
    check = subprocess.run([sys.executable, "-m", "procguard", "-c", str(config), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "metrics: 0.0.0.0:0 (public)" in check.stdout


def test_the_daemon_without_metrics_never_imports_prometheus_client() -> None:
    code = ("import sys, json; sys.modules.setdefault('ssl', None); import procguard.daemon, procguard.control.server; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('prometheus'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == []


def prometheus_binary() -> str | None:
    """$PROCGUARD_TEST_PROMETHEUS (./dev test unpacks Debian's in CI), else one on PATH."""
    for candidate in (os.environ.get("PROCGUARD_TEST_PROMETHEUS"), shutil.which("prometheus")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def query(api: str, promql: str) -> list[dict[str, object]]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.loads(reply.read())
    except (urllib.error.URLError, ConnectionError):
        return []  # not up yet
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


@pytest.mark.skipif(prometheus_binary() is None, reason="no Prometheus (./dev test unpacks Debian's in CI; or set "
                    "PROCGUARD_TEST_PROMETHEUS=/path/to/prometheus)")
def test_a_real_prometheus_scrapes_the_restart_counter_after_a_crash(daemon: Callable[[str], DaemonRun]) -> None:
    binary = prometheus_binary()
    assert binary is not None
    d = daemon("")
    d.write_config(f'[procguard]\nlogdir = "{d.work}/logs"\ncontrol = "{d.endpoint}"\nmetrics = "127.0.0.1:0"\n\n'
                   + prog("web", probe(d.work, "web"), startsecs=0, backoff_initial="0.1s"))
    d.start()
    target = metrics_address(d)
    first = d.wait_reports("web")[0]
    (d.work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: procguard\n    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with open(d.work / "prometheus.log", "wb") as out:
        server = subprocess.Popen([binary, f"--config.file={d.work}/prometheus.yml",
                                   f"--storage.tsdb.path={d.work}/prometheus-data", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def scraped(promql: str, want: str) -> list[dict[str, object]]:
            assert server.poll() is None, (d.work / "prometheus.log").read_text()[-3000:]
            result = query(api, promql)
            return result if result and result[0]["value"][1] == want else []  # type: ignore[index]

        wait_until(lambda: scraped('up{job="procguard"}', "1"), timeout=60, what="Prometheus scraping procguard")
        wait_until(lambda: scraped(f'procguard_process_pid{{process="web"}}', str(first["pid"])), timeout=30,
                   what="web's pid in Prometheus")
        os.kill(first["pid"], signal.SIGKILL)
        d.wait_reports("web", count=2)
        [sample] = wait_until(lambda: scraped('procguard_process_restarts_total{program="web",process="web"}', "1"),
                              timeout=30, what="the restart counter at 1 in Prometheus")
        assert sample["metric"]["job"] == "procguard"  # type: ignore[index]
        assert scraped('procguard_process_exits_total{process="web",reason="signal"}', "1")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
