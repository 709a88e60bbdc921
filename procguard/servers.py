"""What experts know about each Python app server: signals, timeouts, readiness, and known traps.

`server = "gunicorn"` (or uwsgi, daphne, uvicorn, hypercorn) in a program fills in the defaults below;
every one can still be set explicitly. `lint()` finds the traps `procguard --check` warns about.
Each server's signal semantics, with sources, are in docs/servers.md.
"""

import signal
from dataclasses import dataclass

SERVERS = ("uwsgi", "gunicorn", "daphne", "uvicorn", "hypercorn")


@dataclass(frozen=True, slots=True)
class Profile:
    stopsignal: int
    stopwaitsecs: float
    reload_signal: int | None  # graceful in-place reload (reload-app); None: reload-app restarts
    ready: str  # "notify" or "startsecs"


def _flag_value(argv: tuple[str, ...], *names: str) -> str | None:
    """The value of --name VALUE or --name=VALUE in argv (the last one wins, as argparse does)."""
    found = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1:]
    return found


def _has(argv: tuple[str, ...], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f + "=") for f in flags) for a in argv)


def _seconds(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


def graceful_timeout(server: str, argv: tuple[str, ...], *, explicit_only: bool = False) -> float:
    """How long the server itself may take to stop gracefully, from its flags or its default.

    explicit_only: 0 unless a flag sets it (uWSGI's QUIT kills at once; only a configured mercy is
    a promise worth a lint).
    """
    if explicit_only and server == "uwsgi" and _flag_value(argv, "--worker-reload-mercy", "--reload-mercy") is None:
        return 0.0
    if server == "gunicorn":
        return _seconds(_flag_value(argv, "--graceful-timeout"), 30.0)  # gunicorn default 30 s
    if server == "uwsgi":
        # Workers get --worker-reload-mercy (default 60 s) to finish on a graceful stop or reload.
        return _seconds(_flag_value(argv, "--worker-reload-mercy", "--reload-mercy"), 60.0)
    if server == "daphne":
        return _seconds(_flag_value(argv, "--application-close-timeout"), 10.0)
    if server == "uvicorn":
        return _seconds(_flag_value(argv, "--timeout-graceful-shutdown"), 30.0)
    if server == "hypercorn":
        return _seconds(_flag_value(argv, "--graceful-timeout"), 5.0)
    return 0.0


def profile(server: str, argv: tuple[str, ...]) -> Profile:
    """The defaults for `server` given its command line."""
    grace = graceful_timeout(server, argv)
    wait = grace + 5.0  # the server's own grace, then time to exit, before procguard sends SIGKILL
    if server == "gunicorn":
        # TERM: graceful (workers finish requests up to --graceful-timeout); HUP: new workers with the
        # new code and config; USR2 would fork a new master outside procguard's process group.
        return Profile(int(signal.SIGTERM), wait, int(signal.SIGHUP), "notify")
    if server == "uwsgi":
        # Without --die-on-term uWSGI (2.0) treats TERM as "brutal reload" and QUIT as a graceful
        # shutdown; --die-on-term swaps them. HUP: graceful reload. uWSGI speaks sd_notify.
        stop = signal.SIGTERM if _has(argv, "--die-on-term") else signal.SIGQUIT
        return Profile(int(stop), wait, int(signal.SIGHUP), "notify")
    if server == "daphne":
        return Profile(int(signal.SIGTERM), wait, None, "startsecs")
    if server == "uvicorn":
        # With --workers, uvicorn's process manager restarts its workers on HUP; a single process cannot.
        return Profile(int(signal.SIGTERM), wait, int(signal.SIGHUP) if _has(argv, "--workers") else None, "startsecs")
    if server == "hypercorn":
        return Profile(int(signal.SIGTERM), wait, None, "startsecs")
    raise ValueError(server)


def lint(server: str | None, argv: tuple[str, ...], stopsignal: int, stopwaitsecs: float,
         reload_signal: int | None, check_url: str | None = None, check_host: str | None = None) -> list[str]:
    """Known traps in how a program runs its server, each with the fix."""
    host_lint = None
    if check_url is not None and check_host is None:
        netloc = check_url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if netloc in ("127.0.0.1", "localhost", "[::1]"):
            host_lint = (f"the health check sends Host: {netloc}; Django answers 400 unless it is in ALLOWED_HOSTS: "
                         "set host = a name the app allows")
    out: list[str] = []
    exe = argv[0].rsplit("/", 1)[-1] if argv else ""
    kind = server or next((s for s in SERVERS if exe == s or exe.startswith(s + "-")), None)
    if kind is None and len(argv) > 2 and argv[1] == "-m":
        kind = argv[2] if argv[2] in SERVERS else None
    if kind is None:
        return out
    if kind == "uwsgi":
        if not _has(argv, "--master", "-M") and not _has(argv, "--ini", "--yaml", "--xml", "--json"):
            out.append("uWSGI without --master: workers are not respawned and signals do not reach them; add --master")
        if not _has(argv, "--need-app") and not _has(argv, "--ini", "--yaml", "--xml", "--json"):
            out.append("uWSGI without --need-app starts even when the app fails to import and serves 500s; add --need-app")
        die_on_term = _has(argv, "--die-on-term")
        if stopsignal == signal.SIGTERM and not die_on_term:
            out.append("uWSGI reloads on SIGTERM without --die-on-term, so stopping would never end; "
                       'use stopsignal = "QUIT" or add --die-on-term')
        if stopsignal == signal.SIGQUIT and die_on_term:
            out.append('uWSGI with --die-on-term treats QUIT as a reload; use stopsignal = "TERM"')
        if _has(argv, "--daemonize", "-d", "--daemonize2"):
            out.append("uWSGI --daemonize leaves procguard's watch (the process it started exits at once); remove it")
    if kind == "gunicorn":
        if _has(argv, "--daemon", "-D"):
            out.append("gunicorn --daemon forks away from procguard; remove it")
        if reload_signal == signal.SIGUSR2:
            out.append("gunicorn's USR2 upgrade forks a new master that procguard does not own (it orphans it); "
                       'use reload_signal = "HUP"')
    if host_lint is not None:
        out.append(host_lint)
    grace = graceful_timeout(kind, argv, explicit_only=True)
    if stopwaitsecs < grace:
        out.append(f"stopwaitsecs ({stopwaitsecs:g}s) is shorter than {kind}'s own graceful timeout ({grace:g}s): "
                   f"requests in flight are killed; set stopwaitsecs = {grace + 5:g}")
    return out


def gunicorn_control_socket_lint(programs: list[tuple[str, str | None, tuple[str, ...], str | None]]) -> list[str]:
    """Several gunicorns under one user share gunicorn (>= 25.1)'s control socket unless told not to."""
    by_user: dict[str | None, list[str]] = {}
    for name, server, argv, user in programs:
        exe = argv[0].rsplit("/", 1)[-1] if argv else ""
        if (server == "gunicorn" or exe == "gunicorn") and not _has(argv, "--no-control-socket"):
            by_user.setdefault(user, []).append(name)
    return [f"programs {', '.join(names)} run gunicorn as the same user ({user or 'the daemon user'}): "
            "gunicorn >= 25.1 gives them one control socket; add --no-control-socket to each"
            for user, names in by_user.items() if len(names) > 1]

