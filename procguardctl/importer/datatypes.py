"""supervisord's datatypes (supervisor/datatypes.py), read as supervisord reads them; raise Bad as it refuses."""

import shlex
import signal

from procguardctl.importer.report import Bad

TRUTHY = ("yes", "true", "on", "1")
FALSY = ("no", "false", "off", "0")

def sv_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in TRUTHY:
        return True
    if v in FALSY:
        return False
    raise Bad(f"not a valid boolean value: {value!r}")


def sv_int(value: str, minimum: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise Bad(f"not an integer: {value!r}") from None
    if minimum is not None and n < minimum:
        raise Bad(f"expected at least {minimum}, got {n}")
    return n


def sv_size(value: str) -> int | str:
    """supervisord's byte_size: "50MB" (powers of 1024, as procguard) or bytes; as a procguard size."""
    v = value.strip().lower()
    for suffix in ("kb", "mb", "gb"):
        if v.endswith(suffix):
            try:
                return f"{int(v[:-2].strip())}{suffix.upper()}"
            except ValueError:
                break
    else:
        try:
            return int(v)
        except ValueError:
            pass
    raise Bad(f"not a size like 50MB or 1024: {value!r}")


def sv_octal(value: str) -> int:
    try:
        return int(value.strip(), 8)
    except ValueError:
        raise Bad(f"not an octal number: {value!r}") from None


def sv_signal(value: str) -> str | int:
    v = value.strip()
    if v.isdigit():
        if int(v) not in {int(s) for s in signal.Signals}:
            raise Bad(f"not a valid signal number: {value!r}")
        return int(v)
    name = v.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in signal.Signals.__members__:
        raise Bad(f"not a valid signal name: {value!r}")
    return name[3:]


def sv_autorestart(value: str) -> bool | str:
    v = value.strip().lower()
    if v == "unexpected":
        return "unexpected"
    return sv_bool(v)


def sv_exitcodes(value: str) -> list[int]:
    try:
        codes = [int(x) for x in value.split(",")] if value.strip() else []
    except ValueError:
        raise Bad(f"not a list of exit codes: {value!r}") from None
    if not codes or any(not 0 <= c <= 255 for c in codes):
        raise Bad(f"not a list of exit codes (0-255): {value!r}")
    return codes


def sv_environment(value: str) -> dict[str, str]:
    """supervisord's dict_of_key_value_pairs: KEY="val",KEY2=val2, with commas allowed inside quotes.

    The same lexer as supervisord (a non-POSIX shlex with `/.+-():` as word characters), so a value parses
    here exactly as it did there, quirks included (quotes are stripped from both ends, not unescaped).
    """
    lexer = shlex.shlex(value)
    lexer.wordchars += "/.+-():"
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise Bad(f"cannot parse environment: {exc}") from None
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        kv = tokens[i:i + 3]
        if len(kv) != 3 or kv[1] != "=":
            raise Bad(f"unexpected end of key/value pairs in {value!r} (supervisord refuses it too)")
        out[kv[0]] = kv[2].strip("'\"")
        i += 4  # supervisord skips the separator without looking at it
    return out
