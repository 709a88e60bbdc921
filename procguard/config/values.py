"""Parse one TOML value into a typed value: durations, sizes, signals, modes, commands, names.

Each parser returns the value or raises `Bad`, whose message says what was expected; the caller names
the file, the table and the key.
"""

import math
import re
import shlex
import signal

from procguard.config.model import AutoRestart, Ready, RestartStrategy

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$", re.IGNORECASE)
# supervisor's sizes are powers of 1024 ("50MB" is 50 * 1024 * 1024); keep its meaning.
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


class Bad(ValueError):
    """A value was not of the expected form; the message says what was expected."""


def parse_duration(value: object) -> float:
    """Return seconds from 10, 2.5, "500ms", "10s", "2m", "1h" or "1d"."""
    if isinstance(value, bool):
        raise Bad(f'expected a duration like 10 or "500ms", got {value!r}')
    if isinstance(value, int | float):
        if math.isnan(value) or value < 0:
            raise Bad(f"expected a duration >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise Bad(f'expected a duration like 10, "500ms", "10s" or "2m", got {value!r}')


_MAX_SIZE = 2**63 - 1


def parse_size(value: object) -> int:
    """Return bytes from 1024, "50MB", "1GB" (powers of 1024, as supervisor)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).upper() if m.group(2) else None
            # Integers, not float: exact, no OverflowError (and no `decimal`, 0.3 MiB of the daemon, #17).
            # 30 decimals suffice: n / 1024**3 has at most 30; 20 digits before the point exceed 8 EiB.
            whole, _, frac = m.group(1).partition(".")
            whole, frac = whole.lstrip("0"), frac[:30]
            size = int(whole + frac or "0") * _SIZE_UNITS[unit] // int(10 ** len(frac)) if len(whole) < 20 else -1
            if 0 <= size <= _MAX_SIZE:
                return size
            raise Bad(f"expected a size up to 8 EiB (a file offset), got {value!r}")
    raise Bad(f'expected a size like 1048576 or "50MB", got {value!r}')


def parse_signal(value: object) -> int:
    """Return a signal number from "TERM", "SIGQUIT" or 15."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise Bad(f"expected a signal name or number, got {value!r}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise Bad(f'expected a signal name like "TERM" or "QUIT", got {value!r}')


def parse_umask(value: object) -> int:
    """Return a umask from the octal string "022" or an integer (0o22)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,3}", value.strip()):
        return int(value.strip(), 8)
    raise Bad(f'expected an octal umask like "022", got {value!r}')


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise Bad(f"expected true or false, got {value!r}")


def parse_int(value: object, minimum: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if minimum is not None and value < minimum:
            raise Bad(f"expected an integer >= {minimum}, got {value!r}")
        return value
    raise Bad(f"expected an integer, got {value!r}")


def parse_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise Bad(f"expected a string, got {value!r}")


def parse_autorestart(value: object) -> AutoRestart:
    if isinstance(value, bool):
        return AutoRestart.ALWAYS if value else AutoRestart.NEVER
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "unexpected"):
        return AutoRestart(value.strip().lower())
    raise Bad(f'expected true, false or "unexpected", got {value!r}')


def parse_exitcodes(value: object) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise Bad(f'expected a list of exit codes like [0, 2], got {value!r}') from None
    if isinstance(value, list) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value
    ):
        return tuple(value)
    raise Bad(f"expected a list of exit codes (0-255) like [0, 2], got {value!r}")


def parse_command(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise Bad(f"cannot split command: {exc}") from None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        raise Bad(f"expected a string or an array of strings, got {value!r}")
    if not argv or not argv[0]:
        raise Bad("expected a non-empty command")
    return tuple(argv)


def parse_environment(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise Bad(f'expected a table like {{ DJANGO_SETTINGS_MODULE = "app.settings" }}, got {value!r}')
    out = []
    for k, v in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise Bad(f"expected variable names of letters, digits and _, got {k!r}")
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, str | int | float):
            raise Bad(f"expected string values, got {k} = {v!r}")
        out.append((k, str(v)))
    return tuple(out)


# ------------------------------------------------------------------------------------------ programs


def parse_ready(value: object) -> Ready:
    if isinstance(value, str) and value.lower() in set(Ready):
        return Ready(value.lower())
    raise Bad(f'expected "startsecs", "notify" or "healthcheck", got {value!r}')


def parse_restart_strategy(value: object) -> RestartStrategy:
    if isinstance(value, str) and value in RestartStrategy.__members__.values():
        return RestartStrategy(value)
    raise Bad(f'expected "overlap" (the next generation takes over once ready) or "recreate" (stop, then start), '
              f"got {value!r}")


def parse_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise Bad(f'expected a list of program names like ["db", "migrate"], got {value!r}')


def parse_status_codes(value: object) -> tuple[int, ...]:
    codes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(codes, list) and codes and all(
            isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in codes):
        return tuple(codes)
    raise Bad(f"expected an HTTP status or a list of them like [200, 204], got {value!r}")


def parse_address(value: object) -> str:
    if isinstance(value, str):
        if value.startswith("/") or value.startswith("unix:"):
            return value
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise Bad(f'expected "host:port" or a unix socket path, got {value!r}')


def did_you_mean(key: str, known: frozenset[str]) -> str:
    """" (did you mean 'KEY'?)" for the closest known name, or ""."""
    import difflib  # only when a name is wrong

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
