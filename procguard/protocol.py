"""The control protocol: version, commands, error codes, codec and endpoint rules. Stdlib only.

procguardctl imports this module and pyzmq, nothing else of procguard, so it starts fast. The wire
format is written down in docs/protocol.md.

Request:  {"v": 1, "id": "...", "cmd": "status", "args": {...}}
Reply:    {"v": 1, "id": "...", "ok": true, "result": ...}
          {"v": 1, "id": "...", "ok": false, "error": {"code": "no_such_process", "message": "..."}}
"""

import json
import os
from typing import Any, NamedTuple

VERSION = "0.1.0"
PROTOCOL_VERSION = 1

# A request larger than this gets a `too_large` error reply. The socket itself drops (disconnects)
# peers sending frames above MAX_FRAME_BYTES, so a huge frame never reaches memory.
MAX_REQUEST_BYTES = 64 * 1024
MAX_FRAME_BYTES = 1024 * 1024

# Stable error codes carried in replies ({"ok": false, "error": {"code", "message"}}).
E_BAD_REQUEST = "bad_request"  # not JSON, not an object, wrong field types, several frames
E_BAD_VERSION = "bad_version"
E_TOO_LARGE = "too_large"
E_UNKNOWN_COMMAND = "unknown_command"
E_BAD_ARGS = "bad_args"
E_NO_SUCH_PROCESS = "no_such_process"
E_START_FAILED = "start_failed"
E_BAD_SIGNAL = "bad_signal"
E_BAD_CONFIG = "bad_config"
E_NOT_RUNNING = "not_running"
E_ALREADY_STARTED = "already_started"  # per-process outcomes (a result's "error"), not request errors
E_ALREADY_ADDED = "already_added"
E_STILL_RUNNING = "still_running"
E_SHUTTING_DOWN = "shutting_down"
E_REEXEC_REFUSED = "reexec_refused"  # the installed procguard cannot take over (docs/upgrade.md); nothing changed
E_INTERNAL = "internal"

# Command name -> allowed argument names. The client's verbs, the wire commands and the daemon's
# handlers share these names.
COMMANDS: dict[str, frozenset[str]] = {
    "status": frozenset({"names", "long", "usage"}),
    "start": frozenset({"names"}),
    "stop": frozenset({"names"}),
    "restart": frozenset({"names"}),
    "deploy": frozenset({"names"}),
    "reload_app": frozenset({"names"}),
    "signal": frozenset({"signal", "names"}),
    "reload": frozenset(),
    "reread": frozenset(),
    "add": frozenset({"names"}),
    "remove": frozenset({"names"}),
    "update": frozenset({"names"}),
    "pid": frozenset({"names"}),
    "version": frozenset(),
    "shutdown": frozenset(),
    "tail": frozenset({"name", "stream", "follow"}),
    "maintail": frozenset({"follow"}),
    "logreopen": frozenset(),
    "logrotate": frozenset({"names"}),
    "events": frozenset({"names", "limit", "follow"}),
    "alert_test": frozenset({"name"}),
    "reexec": frozenset(),
}
STREAMS = ("stdout", "stderr")


class ProtocolError(Exception):
    """A message broke the protocol; `code` is one of the E_ codes."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


# NamedTuples, not dataclasses: procguardctl imports this module, and `dataclasses` (with inspect, ast
# and dis) cost 30 M instructions of its start, a third of the interpreter's own (callgrind, #17).
class Request(NamedTuple):
    id: str
    cmd: str
    args: dict[str, Any]


def encode_request(cmd: str, args: dict[str, Any] | None = None, request_id: str = "1") -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args or {}}).encode()


def decode_request(frame: bytes) -> Request:
    """Parse and validate one request frame; raise ProtocolError with the code to reply with."""
    if len(frame) > MAX_REQUEST_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"request of {len(frame)} bytes; the limit is {MAX_REQUEST_BYTES}")
    try:
        msg = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(E_BAD_REQUEST, f"not a JSON document: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(E_BAD_REQUEST, f"expected a JSON object, got {type(msg).__name__}")
    rid = msg.get("id")
    request_id = rid if isinstance(rid, str) else None
    if not isinstance(rid, str) or len(rid) > 128:
        raise ProtocolError(E_BAD_REQUEST, '"id" must be a string of at most 128 characters', request_id)
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(E_BAD_VERSION, f"protocol version {msg.get('v')!r} is not supported; "
                            f"this daemon speaks {PROTOCOL_VERSION}", rid)
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(E_BAD_REQUEST, '"cmd" must be a string', rid)
    if cmd not in COMMANDS:
        raise ProtocolError(E_UNKNOWN_COMMAND, f"unknown command {cmd[:64]!r}; known: {', '.join(COMMANDS)}", rid)
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(E_BAD_ARGS, '"args" must be an object', rid)
    unknown = set(args) - COMMANDS[cmd]
    if unknown:
        raise ProtocolError(E_BAD_ARGS, f"{cmd} takes no argument {', '.join(sorted(unknown))!s}", rid)
    names = args.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ProtocolError(E_BAD_ARGS, '"names" must be a list of non-empty strings', rid)
    for flag in ("long", "usage"):
        if flag in args and not isinstance(args[flag], bool):
            raise ProtocolError(E_BAD_ARGS, f'"{flag}" must be true or false', rid)
    if cmd == "signal" and not isinstance(args.get("signal"), str | int):
        raise ProtocolError(E_BAD_ARGS, 'signal needs "signal": a name like "HUP" or a number', rid)
    if cmd == "events":
        limit = args.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ProtocolError(E_BAD_ARGS, '"limit" must be a non-negative integer', rid)
        if not isinstance(args.get("follow", False), bool):
            raise ProtocolError(E_BAD_ARGS, '"follow" must be true or false', rid)
    if cmd == "alert_test" and (not isinstance(args.get("name"), str) or not args["name"]):
        raise ProtocolError(E_BAD_ARGS, 'alert_test needs "name": an [alert.NAME] of the config', rid)
    if cmd == "tail":
        if not isinstance(args.get("name"), str) or not args["name"]:
            raise ProtocolError(E_BAD_ARGS, 'tail needs "name": one process, like "web" or "worker:worker_00"', rid)
        if args.get("stream", "stdout") not in STREAMS:
            raise ProtocolError(E_BAD_ARGS, '"stream" must be "stdout" or "stderr"', rid)
        if not isinstance(args.get("follow", False), bool):
            raise ProtocolError(E_BAD_ARGS, '"follow" must be true or false', rid)
    if cmd == "maintail" and not isinstance(args.get("follow", False), bool):
        raise ProtocolError(E_BAD_ARGS, '"follow" must be true or false', rid)
    if cmd in ("start", "stop", "restart", "signal", "reload_app", "add", "remove", "deploy") and not names:
        raise ProtocolError(E_BAD_ARGS, f'{cmd} needs "names" (a program, program:process, group:* or all)', rid)
    return Request(id=rid, cmd=cmd, args=args)


class JSONArray(list[bytes]):
    """A result that is a JSON array of items already encoded (encode_json's text, as bytes): encode_reply
    puts them into the reply as they are (status caches each process's object, #17)."""


def encode_json(value: Any) -> str:
    """value as encode_reply writes it: compact, ASCII (ensure_ascii), keys in insertion order."""
    return _ENCODER.encode(value)


def encode_reply(request_id: str | None, result: Any = None, error: tuple[str, str] | None = None,
                 more: bool = False) -> bytes:
    """One reply; `more` marks a streamed reply (tail follow) after which further ones come."""
    if isinstance(result, JSONArray) and error is None and not more:
        # The bytes _ENCODER makes of the dict below, built with one copy of the items (390 KB at 1000).
        head = b'{"v":%d,"id":%b,"ok":true,"result":[' % (PROTOCOL_VERSION, _ENCODER.encode(request_id).encode())
        if not result:
            return head + b"]}"
        items = list(result)
        items[0] = head + items[0]
        items[-1] += b"]}"
        return b",".join(items)
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id}
    if error is None:
        msg.update(ok=True, result=result)
        if more:
            msg["more"] = True
    else:
        msg.update(ok=False, error={"code": error[0], "message": error[1]})
    return _ENCODER.encode(msg).encode()


# Our replies are trees of fresh dicts and lists: no cycles to look for (a status reply at 1000
# processes is 1000 dicts), and no blanks after separators (10% of its bytes).
_ENCODER = json.JSONEncoder(check_circular=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------ endpoints


# A daemon running as root keeps its control socket in systemd's RuntimeDirectory=procguard
# (systemd/procguard.service); procguardctl looks there too, for members of its control_group.
ROOT_ENDPOINT = "ipc:///run/procguard/procguard.sock"


def default_endpoint() -> str:
    """ipc:// in a runtime directory: /run/procguard as root, else $XDG_RUNTIME_DIR or a private /tmp dir."""
    if os.geteuid() == 0:
        return ROOT_ENDPOINT
    if os.environ.get("XDG_RUNTIME_DIR"):
        runtime = os.path.join(os.environ["XDG_RUNTIME_DIR"], "procguard")
    else:
        runtime = f"/tmp/procguard-{os.geteuid()}"
    return f"ipc://{runtime}/procguard.sock"


def resolve_endpoint(value: str, here: str) -> str:
    """Make a relative ipc:// path absolute against the config file's directory."""
    if value.startswith("ipc://"):
        path = value[len("ipc://"):]
        if path and not path.startswith("/") and not path.startswith("@"):
            return "ipc://" + os.path.normpath(os.path.join(here, path))
    return value


def ipc_path(endpoint: str) -> str | None:
    """The filesystem path of an ipc:// endpoint (None for tcp:// or abstract @names)."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return endpoint[len("ipc://"):]
    return None


class ClientSettings(NamedTuple):
    """What a client learns from the daemon's config file: where to connect and with which keys."""

    endpoint: str
    server_public_key_file: str | None = None
    client_secret_key_file: str | None = None


def client_settings_from_config(path: str) -> ClientSettings:
    """Read only the [procguard] control keys of a config file (raises OSError, ValueError).

    Here, not in procguardctl: procguard.testing reads a config's endpoint as procguardctl does, and
    procguard never imports procguardctl (tests/unit/test_import_rules.py).
    """
    import tomllib  # only procguardctl -c needs it; keeps `procguardctl` start-up lean

    with open(path, "rb") as f:
        data = tomllib.load(f)
    section = data.get("procguard", {})
    here = os.path.dirname(os.path.abspath(path))
    control = section.get("control")
    if isinstance(control, str):
        endpoint = resolve_endpoint(control, here)
    elif os.stat(path).st_uid == 0:
        # No control key: the daemon uses its own default. A root-owned config is a root daemon's,
        # whose default is /run/procguard (not the one for this client's uid).
        endpoint = ROOT_ENDPOINT
    else:
        endpoint = default_endpoint()
    curve = section.get("curve", {})
    server_public = client_secret = None
    if isinstance(curve, dict):
        secret = curve.get("server_secret_key")
        if isinstance(secret, str):
            # The public half sits beside the secret (procguardctl keygen writes NAME.key and NAME.key_secret).
            public = os.path.join(here, secret)
            server_public = public[: -len("_secret")] if public.endswith("_secret") else public
        cs = curve.get("client_secret_key")
        if isinstance(cs, str):
            client_secret = os.path.join(here, os.path.expanduser(cs))
    return ClientSettings(endpoint, server_public, client_secret)
