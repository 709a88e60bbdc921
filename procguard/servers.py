"""What experts know about each Python app server: signals, timeouts, readiness, and known traps.

`server = "gunicorn"` (or uwsgi, daphne, uvicorn, hypercorn) in a program fills in the defaults below;
every one can still be set explicitly. `lint()` finds the traps `procguard --check` warns about.
Each server's signal semantics, with sources, are in docs/servers.md.
"""

import enum
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from procguard.config.keys import SERVERS as SERVERS  # the one list; stdlib only, shared with procguardctl


@dataclass(frozen=True, slots=True)
class Profile:
    stopsignal: int
    stopwaitsecs: float
    reload_signal: int | None  # graceful in-place reload (reload-app); None: reload-app restarts
    ready: str  # "notify" or "startsecs"
    # drain_timeout: servers that cut off connections they accepted but had not answered when they stop
    # (uWSGI's workers blocked in accept, daphne, uvicorn, hypercorn) need the handover on restart;
    # gunicorn answers what its workers accepted (0 failed requests in every run under load).
    drain: float = 0.0
    # Whether the workers keep serving when their master dies (SIGKILL, OOM). gunicorn's do, until they
    # notice; uWSGI's exit at once ("the master disconnected from this worker": a worker's read of its
    # signal socket to the master sees EOF, core/signal.c uwsgi_receive_signal -> end_me), so after a
    # crashed master the connections still queued on the held socket must stay there for the
    # replacement (no handover, config.ProgramConfig.orphans_serve).
    orphans_serve: bool = True


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


# uWSGI 2.0 has no graceful stop on a signal by default (TERM: brutal reload, or with --die-on-term a
# brutal stop; INT and QUIT: kill at once). This hook, run when the master starts, makes TERM a graceful
# stop: the workers finish their requests (up to --worker-reload-mercy), then the master exits 0.
UWSGI_GRACEFUL_HOOK = "unix_signal:15 gracefully_kill_them_all"


def uwsgi_graceful_term(argv: tuple[str, ...]) -> bool:
    """True when the command remaps uWSGI's TERM to a graceful stop (UWSGI_GRACEFUL_HOOK)."""
    for i, arg in enumerate(argv):
        if arg == "--hook-master-start" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--hook-master-start="):
            value = arg.partition("=")[2]
        else:
            continue
        if value.split() == UWSGI_GRACEFUL_HOOK.split():
            return True
    return False


def graceful_timeout(server: str, argv: tuple[str, ...], *, explicit_only: bool = False) -> float:
    """How long the server itself may take to stop gracefully, from its flags or its default.

    explicit_only: for uWSGI without its graceful TERM hook, 0 unless a flag sets it (its stop kills
    at once; only a configured mercy is a promise worth a lint).
    """
    if explicit_only and server == "uwsgi" and not uwsgi_graceful_term(argv) \
            and _flag_value(argv, "--worker-reload-mercy", "--reload-mercy") is None:
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
        # uWSGI 2.0: TERM is a brutal reload unless --die-on-term (then a brutal stop) or the graceful
        # hook (a graceful stop); QUIT and INT kill at once. HUP: graceful reload. It speaks sd_notify.
        graceful = uwsgi_graceful_term(argv)
        stop = signal.SIGTERM if graceful or _has(argv, "--die-on-term") else signal.SIGQUIT
        # A worker blocked in accept() when the stop arrives closes what it accepted unanswered.
        return Profile(int(stop), wait, int(signal.SIGHUP), "notify", grace, orphans_serve=False)
    if server == "daphne":
        # TERM cancels every request in flight (kill_all_applications): it has no graceful stop.
        return Profile(int(signal.SIGTERM), wait, None, "startsecs", grace)
    if server == "uvicorn":
        # With --workers, uvicorn's process manager restarts its workers on HUP; a single process cannot.
        # Its workers can close a connection they accepted but had not read when TERM arrives (a reset).
        return Profile(int(signal.SIGTERM), wait, int(signal.SIGHUP) if _has(argv, "--workers") else None, "startsecs",
                       grace)
    if server == "hypercorn":
        # TERM closes every connection without a request under way, even one whose request is in its
        # socket buffer (the keep-alive idle task).
        return Profile(int(signal.SIGTERM), wait, None, "startsecs", grace)
    raise ValueError(server)


class Protocol(enum.StrEnum):
    """What a server speaks on one of its held sockets, as far as a health check cares."""

    HTTP = "http"
    UWSGI = "uwsgi"  # uWSGI's binary protocol (its --socket), what nginx's uwsgi_pass speaks
    OTHER = "other"  # FastCGI, SCGI, TLS...: no default check can speak it


# uWSGI's socket options by protocol (uWSGI docs, "Configuring uWSGI" / "Native HTTP support").
_UWSGI_HTTP = ("--http-socket", "--http", "--http11-socket")
_UWSGI_NATIVE = ("--socket", "-s", "--uwsgi-socket")
_UWSGI_OTHER = ("--https-socket", "--https", "--fastcgi-socket", "--scgi-socket", "--fastcgi-nph-socket",
                "--scgi-nph-socket", "--suwsgi-socket", "--ssl-socket", "--raw-socket", "--puwsgi-socket")


def socket_protocol(server: str, argv: tuple[str, ...], fd: int) -> Protocol:
    """What `server` run as `argv` speaks on the held socket it inherits as descriptor `fd`.

    Every server but uWSGI speaks HTTP on it. uWSGI speaks what the option naming `fd://N` says
    (`--socket`: the uwsgi protocol, `--http-socket`: HTTP); a socket it takes from LISTEN_FDS without
    naming it speaks `--protocol` (default: the uwsgi protocol).
    """
    if server != "uwsgi":
        return Protocol.HTTP
    target = f"fd://{fd}"
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if not eq:
            name, value = arg, argv[i + 1] if i + 1 < len(argv) else ""
        if value != target:
            continue
        if name in _UWSGI_HTTP:
            return Protocol.HTTP
        if name in _UWSGI_NATIVE:
            return Protocol.UWSGI
        if name in _UWSGI_OTHER:
            return Protocol.OTHER
    protocol = _flag_value(argv, "--protocol")
    if protocol is None or protocol == "uwsgi":
        return Protocol.UWSGI
    return Protocol.HTTP if protocol in ("http", "http11") else Protocol.OTHER


def checked_socket(server: str, argv: tuple[str, ...], held: Sequence[str]) -> tuple[int, Protocol] | None:
    """Which of the held sockets (names in fd order: 3, 4, ...) a default health check asks, and how.

    The first one the server speaks HTTP or the uwsgi protocol on; None when there is none.
    """
    for index, _ in enumerate(held):
        protocol = socket_protocol(server, argv, 3 + index)
        if protocol != Protocol.OTHER:
            return index, protocol
    return None


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
        graceful = uwsgi_graceful_term(argv)
        config_file = _has(argv, "--ini", "--yaml", "--xml", "--json")
        if stopsignal == signal.SIGTERM and not die_on_term and not graceful:
            out.append("uWSGI reloads on SIGTERM without --die-on-term, so stopping would never end; "
                       f'add "--hook-master-start", "{UWSGI_GRACEFUL_HOOK}" (a graceful stop on TERM)')
        if stopsignal == signal.SIGQUIT and die_on_term:
            out.append('uWSGI with --die-on-term treats QUIT as a reload; use stopsignal = "TERM"')
        if not graceful and not config_file and stopsignal in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            out.append("uWSGI stops brutally (requests in flight are cut off on every stop and restart); add "
                       f'"--hook-master-start", "{UWSGI_GRACEFUL_HOOK}" to the command: TERM then waits for them')
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


# Flags naming a file or socket of which one generation of a server has one: two generations at once
# (restart_strategy = "overlap") would overwrite or fight over it.
_ONE_PER_SERVER_FLAGS = ("--pid", "-p", "--pidfile", "--pidfile2", "--safe-pidfile", "--safe-pidfile2", "--stats",
                         "--master-fifo", "--control-socket")


def overlap_lint(server: str | None, argv: tuple[str, ...]) -> list[str]:
    """Traps of running two generations of one server at once (docs/deploys.md)."""
    exe = argv[0].rsplit("/", 1)[-1] if argv else ""
    out = [f"{flag} {_flag_value(argv, flag)}: the next generation starts while the current one runs, and both use "
           'it; drop it, or set restart_strategy = "recreate"'
           for flag in _ONE_PER_SERVER_FLAGS if _flag_value(argv, flag) is not None]
    if (server == "gunicorn" or exe == "gunicorn") and not _has(argv, "--no-control-socket") \
            and not _has(argv, "--control-socket"):
        out.append("gunicorn >= 25.1 opens one control socket per user: the next generation's would collide with "
                   "the current one's during a deploy; add --no-control-socket")
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

