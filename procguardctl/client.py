"""One request, one reply over a DEALER socket, with the reasons a daemon may be unreachable.

Imports only the standard library, procguard.protocol and pyzmq (a test checks it), so the client
starts in tens of milliseconds.
"""

import _socket  # the C module: socket.py's enums cost 14 M instructions of each start (callgrind, #17)
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from procguard.protocol import MAX_FRAME_BYTES, encode_request, ipc_path
from procguardctl import zmtp

if TYPE_CHECKING:
    import zmq  # tcp:// only, imported there: an ipc:// request never loads pyzmq (zmtp.py)

    from procguardctl.endpoint import ClientSettings

# How long to wait for the connection and authentication before calling the daemon unreachable.
CONNECT_TIMEOUT_S = 5.0


class Unreachable(Exception):
    """The daemon could not be reached or refused us; the message names the endpoint and the likely cause."""


class TimedOut(Exception):
    """Connected, but no reply came within the timeout."""


class Reply(NamedTuple):  # not a dataclass: `dataclasses` (and inspect, ast, dis) is ~40 M instructions to import
    ok: bool
    result: Any
    code: str | None
    message: str | None


def precheck_ipc(endpoint: str) -> None:
    """Connect to an ipc:// path with a plain AF_UNIX socket first: it tells 'not running' from 'no permission'.

    ZeroMQ would just retry quietly in both cases.
    """
    path = ipc_path(endpoint)
    if path is not None:
        _connect_unix(endpoint, path).close()


def _connect_unix(endpoint: str, path: str) -> _socket.socket:
    """A connected AF_UNIX stream socket to the daemon's ipc:// path, or Unreachable saying why not."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise Unreachable(f"cannot reach procguard at {endpoint}: no socket there (is the daemon running? "
                              "is this the endpoint in its config? try -c CONFIG or -s ENDPOINT)") from None
        except PermissionError:
            raise Unreachable(f"cannot reach procguard at {endpoint}: permission denied (uid {os.geteuid()}); "
                              "control is for root, the daemon's user and members of its control_group") from None
        except ConnectionRefusedError:
            raise Unreachable(f"cannot reach procguard at {endpoint}: connection refused "
                              "(a stale socket: the daemon is not running)") from None
        except OSError as exc:
            raise Unreachable(f"cannot reach procguard at {endpoint}: {exc.strerror or exc}") from None
    except BaseException:
        s.close()
        raise
    return s


def _connect_limit(timeout_s: float | None) -> float:
    """Seconds to connect and authenticate: CONNECT_TIMEOUT_S, or the whole timeout if that is shorter."""
    return CONNECT_TIMEOUT_S if timeout_s is None else min(CONNECT_TIMEOUT_S, timeout_s)


def _refused(endpoint: str) -> Unreachable:
    return Unreachable(f"procguard at {endpoint} refused this client (uid {os.geteuid()}): not authorised; "
                       "control is for root, the daemon's user, members of its control_group, "
                       "or (tcp://) clients whose public key is in authorized_clients")


def _handshake_failed(endpoint: str) -> Unreachable:
    return Unreachable(f"handshake with {endpoint} failed (wrong CURVE keys, or not a procguard socket)")


def _lost(endpoint: str) -> Unreachable:
    # The reply would be lost with the connection (a DEALER does not resend), so say so now.
    return Unreachable(f"lost the connection to procguard at {endpoint} before its reply "
                       "(did the daemon exit? see procguardctl status)")


def _timed_out(endpoint: str, timeout_s: float) -> TimedOut:
    return TimedOut(f"no reply from procguard at {endpoint} within {timeout_s:g}s "
                    "(the command may still be running; see procguardctl status)")


def _reply(frame: bytes, endpoint: str, request_id: str, on_more: Callable[[Any], None] | None) -> Reply | bool:
    """The reply in `frame`; else True for a streamed part (given to on_more: more is to come) and
    False for a message that is not ours."""
    try:
        msg = json.loads(frame)
    except ValueError:
        raise Unreachable(f"{endpoint} answered with something that is not procguard's protocol") from None
    if not isinstance(msg, dict) or msg.get("id") not in (request_id, None):
        return False  # a stray reply to somebody else's id cannot reach a fresh DEALER, but be safe
    if msg.get("ok") and msg.get("more") and on_more is not None:
        on_more(msg.get("result"))
        return True
    if msg.get("ok"):
        return Reply(True, msg.get("result"), None, None)
    err = msg.get("error") or {}
    return Reply(False, None, str(err.get("code")), str(err.get("message")))


def _load_curve(sock: "zmq.Socket[bytes]", server_key_file: str | None, client_key_file: str | None,
                endpoint: str) -> None:
    import zmq.auth  # only tcp:// needs it

    if not server_key_file or not client_key_file:
        raise Unreachable(f"{endpoint} is a tcp:// endpoint and needs CURVE keys: the server's public key "
                          "(--server-key, or [procguard.curve] server_secret_key in -c CONFIG) and a client "
                          "secret key (--client-key or [procguard.curve] client_secret_key)")
    try:
        server_public, _ = zmq.auth.load_certificate(server_key_file)
        client_public, client_secret = zmq.auth.load_certificate(client_key_file)
    except (OSError, ValueError) as exc:
        raise Unreachable(f"cannot load CURVE keys: {exc}") from None
    if client_secret is None:
        raise Unreachable(f"{client_key_file}: no secret key in this file (use NAME.key_secret)")
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret


def monitor_event(frames: list[bytes]) -> int:
    """The event id of a monitor message: first frame = uint16 event + uint32 value (zmq_socket_monitor(3)).

    Decoded here because zmq.utils.monitor imports zmq.asyncio, and with it all of asyncio (~17 ms).
    """
    return int.from_bytes(frames[0][:2], sys.byteorder)


def request(where: "ClientSettings", cmd: str, args: dict[str, Any], timeout_s: float | None,
            on_more: Callable[[Any], None] | None = None) -> Reply:
    """Send one command to the daemon at `where` (endpoint and CURVE keys) and wait for its reply.

    Raises Unreachable (no daemon, no permission, refused by authentication) and TimedOut.
    timeout_s None waits for as long as the command takes, once connected. A streamed command
    (tail -f) sends replies marked "more": each goes to on_more, without a timeout, until a last one.
    """
    endpoint = where.endpoint
    path = ipc_path(endpoint)
    if path is not None:
        return _request_ipc(endpoint, path, cmd, args, timeout_s, on_more)
    import zmq  # tcp:// (CURVE) and abstract ipc://@names

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, 64 * MAX_FRAME_BYTES)
    monitor = None
    try:
        if endpoint.startswith("tcp://"):
            _load_curve(sock, where.server_public_key_file, where.client_secret_key_file, endpoint)
        monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
        )
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise Unreachable(f"bad endpoint {endpoint}: {exc}") from None
        request_id = os.urandom(6).hex()
        sock.send(encode_request(cmd, args, request_id))
        return _await_reply(sock, monitor, endpoint, request_id, timeout_s, on_more)
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def _request_ipc(endpoint: str, path: str, cmd: str, args: dict[str, Any], timeout_s: float | None,
                 on_more: Callable[[Any], None] | None) -> Reply:
    """request() over ipc://: ZMTP spoken here (zmtp.py), the same replies and errors as through pyzmq."""
    start = time.monotonic()
    sock = _connect_unix(endpoint, path)
    try:
        dealer = zmtp.Dealer(sock, 64 * MAX_FRAME_BYTES)
        limit = _connect_limit(timeout_s)
        try:
            dealer.handshake(start + limit)
        except TimeoutError:
            raise Unreachable(f"cannot reach procguard at {endpoint}: no handshake within {limit:g}s") from None
        except zmtp.Refused:
            raise _refused(endpoint) from None
        except (zmtp.NotZmtp, zmtp.Closed, zmtp.TooLarge, ConnectionError):
            raise _handshake_failed(endpoint) from None
        request_id = os.urandom(6).hex()
        try:
            dealer.send(encode_request(cmd, args, request_id))
        except ConnectionError:  # closed after the handshake (a daemon exiting or re-executing): not our stdout
            raise _lost(endpoint) from None
        while True:
            try:
                frame = dealer.recv(None if timeout_s is None else start + timeout_s)
            except TimeoutError:
                assert timeout_s is not None
                raise _timed_out(endpoint, timeout_s) from None
            except (zmtp.Closed, zmtp.TooLarge, ConnectionError):
                raise _lost(endpoint) from None
            reply = _reply(frame, endpoint, request_id, on_more)
            if isinstance(reply, Reply):
                return reply
            if reply:
                timeout_s = None  # streaming: wait for as long as it goes on
    finally:
        sock.close()


def _await_reply(sock: "zmq.Socket[bytes]", monitor: "zmq.Socket[bytes]", endpoint: str, request_id: str,
                 timeout_s: float | None, on_more: Callable[[Any], None] | None) -> Reply:
    import zmq

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    start = time.monotonic()
    connected = False
    retries = 0
    while True:
        now = time.monotonic()
        if not connected:
            limit = _connect_limit(timeout_s)
        else:
            limit = float("inf") if timeout_s is None else timeout_s
        remaining = start + limit - now
        if remaining <= 0:
            if not connected:
                cause = "connection refused (is the daemon running?)" if retries else "no handshake"
                raise Unreachable(f"cannot reach procguard at {endpoint}: {cause} within {limit:g}s")
            assert timeout_s is not None
            raise _timed_out(endpoint, timeout_s)
        events = dict(poller.poll(None if remaining == float("inf") else int(remaining * 1000) + 1))
        if sock in events:
            reply = _reply(sock.recv(), endpoint, request_id, on_more)
            if isinstance(reply, Reply):
                return reply
            if reply:
                timeout_s = None  # streaming: wait for as long as it goes on
            continue
        if monitor in events:
            kind = monitor_event(monitor.recv_multipart())
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                connected = True
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise _refused(endpoint)
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                raise _handshake_failed(endpoint)
            elif kind == zmq.EVENT_CONNECT_RETRIED:
                retries += 1
            elif kind == zmq.EVENT_DISCONNECTED and connected:
                raise _lost(endpoint)
