"""procguardctl must start fast: importing it loads no daemon module and nothing heavy."""

import json
import subprocess
import sys


def test_procguardctl_imports_nothing_heavy():
    code = (
        "import sys, json; import procguardctl.__main__, procguardctl.client; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    heavy = {"psutil", "structlog", "asyncio", "procguard.config.model", "procguard.engine.supervisor", "procguard.runtime.realos",
             "procguard.engine.process", "procguard.control.server", "zmq.asyncio", "tomllib",
             # procguardctl top's screen library and module are for top only; metrics are the daemon's.
             "curses", "_curses", "procguardctl.top", "prometheus_client", "procguard.observe.metrics"}
    assert not (loaded & heavy), sorted(loaded & heavy)


def test_importer_loads_the_config_keys_and_nothing_else_of_the_daemon():
    """import-supervisor writes the keys, templates and endpoint the daemon reads (config.keys, protocol: stdlib only)."""
    code = ("import sys, json; import procguardctl.importer; "
            "print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    assert {m for m in loaded if m.split(".")[0] == "procguard"} == {"procguard", "procguard.config",
                                                                       "procguard.config.keys", "procguard.protocol"}
    assert not {m for m in loaded if m.split(".")[0] in ("psutil", "structlog", "asyncio", "zmq", "tomllib")}


def test_idle_daemon_imports_only_what_it_runs_on():
    """The daemon's entry point loads no module that only some command or config needs (issue #17).

    psutil (status -l, memory guards, stray scans), shutil with bz2/lzma (held sockets' spawn),
    decimal (sizes are parsed with integers) and ssl/twisted (never used) are imported on demand.
    """
    code = (
        "import atexit, sys, json\n"
        "atexit.register(lambda: print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None))))\n"
        "sys.argv = ['procguard', '-c', '/nonexistent/procguard.toml']\n"
        "from procguard.__main__ import main\n"
        "sys.exit(main())\n"
    )
    # A config that cannot be read: everything is imported, nothing runs (argparse's help formatter,
    # which --version would use, imports shutil itself).
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "refusing config" in r.stderr, r
    loaded = set(json.loads(r.stdout.splitlines()[-1]))
    assert "procguard.engine.supervisor" in loaded and "zmq" in loaded  # the daemon itself did load
    lazy = {"psutil", "shutil", "bz2", "lzma", "decimal", "ssl", "twisted"}
    assert not (loaded & lazy), sorted(loaded & lazy)


def test_procguardctl_status_over_ipc_loads_no_pyzmq_and_no_slow_stdlib(tmp_path):
    """`procguardctl status` on an ipc:// endpoint speaks ZMTP itself (procguardctl/zmtp.py): pyzmq,
    dataclasses, socket.py, datetime and shutil cost more than the interpreter's own start (issue #17)."""
    code = (
        "import atexit, sys, json\n"
        "atexit.register(lambda: print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None))))\n"
        "from procguardctl.__main__ import main\n"
        f"sys.exit(main(['-s', 'ipc://{tmp_path}/none.sock', 'status']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 4 and "no socket there" in r.stderr, r  # it did try to connect
    loaded = set(json.loads(r.stdout.splitlines()[-1]))
    assert "procguardctl.client" in loaded
    slow = {"zmq", "dataclasses", "socket", "datetime", "shutil", "inspect"}
    assert not (loaded & slow), sorted(loaded & slow)


def test_procguardctl_status_loads_neither_gettext_nor_locale(tmp_path):
    """argparse's messages are shown untranslated (no catalog exists for them): procguardctl's entry point
    gives argparse a stand-in gettext, so the real one and locale (8.7 M instructions) stay unloaded (#17)."""
    code = (
        "import atexit, sys, json\n"
        "atexit.register(lambda: print(json.dumps([sorted(m for m, v in sys.modules.items() if v is not None),\n"
        "                                          hasattr(sys.modules['gettext'], 'translation')])))\n"
        "from procguardctl.__main__ import main\n"
        f"sys.exit(main(['-s', 'ipc://{tmp_path}/none.sock', 'status']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 4 and "no socket there" in r.stderr, r
    loaded, real_gettext = json.loads(r.stdout.splitlines()[-1])
    assert "locale" not in loaded and not real_gettext
    usage = subprocess.run([sys.executable, "-m", "procguardctl", "bogus"], capture_output=True, text=True)
    assert usage.returncode == 2 and "procguardctl: error: argument COMMAND: invalid choice: 'bogus'" in usage.stderr
