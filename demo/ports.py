"""Print where the coffeehouse demo answers, read from the [socket.*] tables of conf.d/*.toml.

`./dev run` calls it before it starts the daemon, so the printed ports are always the configured ones.
"""

import sys
import tomllib
from pathlib import Path

CONF_D = Path(__file__).resolve().parent.parent / "conf.d"
ASGI = ("daphne", "uvicorn", "hypercorn")
NGINX = "http://127.0.0.1:8000/  (nginx, then uWSGI; demo/nginx/)"


def describe(conf_d: Path) -> list[str]:
    """One line per held socket of a program with a `server`, in port order."""
    rows: list[tuple[str, str]] = []
    for path in sorted(conf_d.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        sockets = data.get("socket", {})
        for name, program in data.get("program", {}).items():
            server = program.get("server")
            if server is None:
                continue
            command = program["command"]
            for sock in program.get("sockets", []):
                address = sockets[sock]["bind"].removeprefix("tcp://")
                flag = command[command.index(f"fd://{{socket.{sock}.fd}}") - 1] if server == "uwsgi" else ""
                if flag == "--socket":  # uWSGI's binary protocol: for nginx, not for a browser
                    url = f"uwsgi://{address}  (uwsgi protocol, for nginx)"
                else:
                    url = f"http://{address}/" + (f"  ws://{address}/ws/echo/" if server in ASGI else "")
                rows.append((address, f"  {server:<10} {url:<60} [{name}]"))
    return [line for _, line in sorted(rows)]


if __name__ == "__main__":
    lines = describe(CONF_D)
    if "--nginx" in sys.argv:
        lines.insert(0, f"  {'nginx':<10} {NGINX:<60} [coffeehousenginx]")
    print("coffeehouse (demo/), served on loopback by:")
    print("\n".join(lines))
    print("admin: http://127.0.0.1:8002/admin/ (first: .venv/bin/python demo/manage.py createsuperuser)")
