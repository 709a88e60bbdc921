"""The control socket: a ZeroMQ ROUTER on the event loop, its framing and error replies.

Requests are answered by procguard.control.handlers (one method per command); peers are admitted
by procguard.control.auth (ZAP).

Every request runs in its own task and is answered when its command is done, so a slow stop never
holds up `status` or commands on other programs; commands on one program queue on that program's
lock inside the Supervisor. There is no global busy lock.

Safe by default (docs/protocol.md, "Security"):
- ipc:// sockets live in a 0750 directory, the socket is 0660 and group-owned by control_group;
- every connection goes through our ZAP handler, which admits by peer uid (root, the daemon's user,
  members of control_group) for ipc:// and by CURVE public key for tcp://;
- ZMQ_ZAP_ENFORCE_DOMAIN is set, so if the handler were not running libzmq refuses the connection
  instead of letting it in (ZAP is fail-open without it: zmq_setsockopt(3), ZMQ_ZAP_ENFORCE_DOMAIN);
- a lock file taken before bind stops a second daemon from stealing the socket (libzmq unlinks an
  existing ipc path on bind).
"""

import asyncio
import errno
import fcntl
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import zmq
import zmq.asyncio

from procguard.config.model import Config, ConfigDiff
from procguard.control import auth
from procguard.control.follow import Followers, FollowStart
from procguard.control.handlers import AfterReply, Handlers
from procguard.engine.supervisor import Supervisor
from procguard.errors import ConfigError, ControlError, ProcguardError
from procguard.io.output import Output
from procguard.log import LogRing, get_logger
from procguard.observe.alerts import AlertManager
from procguard.observe.events import EventBus
from procguard.protocol import (
    E_BAD_CONFIG, E_BAD_REQUEST, E_INTERNAL, E_SHUTTING_DOWN, MAX_FRAME_BYTES,
    ProtocolError, Request, decode_request, default_endpoint, encode_reply, ipc_path,
)
from procguard.runtime.heap import trim_heap
from procguard.upgrade.fds import tcp_listener, unix_listener

log = get_logger()

SEND_HWM = 64  # messages queued per slow client (ZMQ_SNDHWM) before pushes to it are dropped
# Commands refused once shutdown began (status, pid and version still answer while programs stop).
REFUSED_WHILE_STOPPING = frozenset({"start", "restart", "deploy", "reload", "signal", "reload_app", "update",
                                    "add", "reexec"})
# After this many requests, the first moment none is in flight returns malloc's free pages (runtime/heap.py):
# a trim took 0.7-1.0 ms in the daemon after 10,000-20,000 requests; at most once per this many requests.
TRIM_AFTER_REQUESTS = 1000
DETACH_LINGER_MS = 2000  # a re-exec flushes the replies already sent for at most this long


class ControlSetupError(ProcguardError):
    """The control socket could not be set up (endpoint in use, bad keys, permissions)."""


class ControlServer:
    """Serve the control protocol for one Supervisor until closed."""

    def __init__(
        self,
        config: Config,
        supervisor: Supervisor,
        reload: Callable[[], Awaitable[ConfigDiff]],
        request_shutdown: Callable[[], None],
        output: Output | None = None,
        events: EventBus | None = None,
        alerts: AlertManager | None = None,
        mainlog: LogRing | None = None,
        handoff: tuple[int | None, int] | None = None,
        reexec: Callable[[], Awaitable[AfterReply]] | None = None,
    ) -> None:
        self.config = config
        self.endpoint = config.control
        self._followers = Followers(events)
        self.handlers = Handlers(supervisor, reload, request_shutdown, self._followers, output, events, alerts,
                                 mainlog, reexec)
        self._handlers = self.handlers.table()
        self._policy = auth.peer_policy(config)
        self._ctx = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self._zap: zmq.asyncio.Socket | None = None
        self._lock_fd: int | None = None
        # ipc:// and tcp://IP:PORT: the listening socket is ours (ZMQ_USE_FD), so a re-exec keeps it open and
        # its backlog holds the connections made meanwhile; handoff: (lock fd (ipc://), listening fd) a
        # previous image left.
        self.listen_fd: int | None = None
        self._handoff = handoff
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: list[asyncio.Task[None]] = []
        self.stopping = False
        # (command, outcome) -> requests answered; outcome "ok" or the error code (metrics).
        self.requests: dict[tuple[str, str], int] = {}
        self._since_trim = 0  # requests answered since the heap was last trimmed

    # --------------------------------------------------------------------------------- set-up

    def open(self) -> None:
        """Lock, authenticate, bind. Raises ControlSetupError with the reason; binds nothing on failure."""
        try:
            self._open()
        except BaseException:
            self._close_sockets()
            raise

    def _open(self) -> None:
        path = ipc_path(self.endpoint)
        if path is not None:
            self._prepare_ipc(path)
        # The ZAP handler is bound before the ROUTER exists, so no connection can beat it.
        zap = self._zap = self._ctx.socket(zmq.REP)
        zap.linger = 0
        zap.bind(auth.ZAP_ENDPOINT)
        router = self._router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)  # bigger frames drop the peer before buffering
        # Sending to a peer that left raises EHOSTUNREACH instead of vanishing: how tail -f learns it ended.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.sndhwm = SEND_HWM
        router.setsockopt_string(zmq.ZAP_DOMAIN, auth.ZAP_DOMAIN)
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # fail closed: no handler means no entry
        if self.endpoint.startswith("tcp://"):
            assert self.config.curve is not None  # config/sections.py refuses tcp:// without [procguard.curve]
            from zmq.auth import load_certificate  # CURVE only: not loaded for ipc:// (#17)

            try:
                public, secret = load_certificate(self.config.curve.server_secret_key)
            except (OSError, ValueError) as exc:
                raise ControlSetupError(f"{self.config.curve.server_secret_key}: cannot load the server key: {exc}") from None
            if not secret:
                raise ControlSetupError(f"{self.config.curve.server_secret_key}: no secret key in this file "
                                        "(use the NAME.key_secret written by procguardctl keygen)")
            router.curve_server = True
            router.curve_publickey = public
            router.curve_secretkey = secret
        self._bind(router, path)
        self._handoff = None

    def _bind(self, router: zmq.asyncio.Socket, path: str | None) -> None:
        old_umask = os.umask(0o117) if path is not None else None  # the socket is born 0660
        try:
            if self._handoff is not None:
                self.listen_fd = self._handoff[1]
            elif path is not None:
                self.listen_fd = unix_listener(path)
            else:
                self.listen_fd = tcp_listener(self.endpoint)  # None: libzmq binds it
            if self.listen_fd is not None:
                router.setsockopt(zmq.USE_FD, self.listen_fd)  # libzmq owns (and closes) it from here
            router.bind(self.endpoint)
        except zmq.ZMQError as exc:
            raise ControlSetupError(f"cannot bind the control socket {self.endpoint}: {exc}") from None
        except OSError as exc:
            raise ControlSetupError(f"cannot bind the control socket {self.endpoint}: {exc.strerror}") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if path is not None:
            os.chmod(path, 0o660)
            if self.config.control_gid is not None:
                os.chown(path, -1, self.config.control_gid)

    def restore(self) -> bool:
        """Bind the ipc:// socket again when its path is gone (its directory was removed); True if it was.

        Raises ControlSetupError (another daemon took the endpoint meanwhile) or OSError.
        """
        path = ipc_path(self.endpoint)
        if path is None or self._router is None or os.path.exists(path):
            return False
        try:
            self._router.unbind(self.endpoint)
        except zmq.ZMQError:
            pass  # already gone with its file
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # its file went with the directory
            self._lock_fd = None
        self._prepare_ipc(path)
        self._bind(self._router, path)
        log.warning("control_socket_restored", endpoint=self.endpoint, reason="its path was gone")
        return True

    def _prepare_ipc(self, path: str) -> None:
        if self._handoff is not None:
            self._lock_fd = self._handoff[0]  # still locked: the lock belongs to the open file, which exec keeps
            return
        directory = os.path.dirname(path) or "."
        created = False
        if not os.path.lexists(directory):
            os.makedirs(os.path.dirname(directory) or "/", exist_ok=True)
            try:
                os.mkdir(directory, 0o750)
                created = True
            except FileExistsError:
                pass
        # Whoever owns the directory can swap the socket for their own, and the default may sit in /tmp
        # where someone else could have made it first (or left a symlink): only root or us.
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, os.geteuid()):
            raise ControlSetupError(f"{directory}: not a directory owned by root or uid {os.geteuid()}; "
                                    "refusing to put the control socket there")
        if created or self.endpoint == default_endpoint():
            os.chmod(directory, 0o750)  # mkdir's mode is filtered by the umask
            if self.config.control_gid is not None:
                os.chown(directory, -1, self.config.control_gid)
        lock_path = path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ControlSetupError(f"another procguard (pid {holder}) already serves {self.endpoint}; "
                                        "refusing to take its socket") from None
            raise ControlSetupError(f"cannot lock {lock_path}: {exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start(self) -> None:
        """Start serving requests and authenticating peers on the running loop."""
        self._serving = [asyncio.create_task(self._zap_loop()), asyncio.create_task(self._serve())]
        log.info("control_listening", endpoint=self.endpoint, group=self.config.control_group)

    async def close(self) -> None:
        """Stop serving; cancel requests in flight; unbind and unlink the socket; release the lock."""
        self._followers.end_all("procguard is shutting down")
        for task in [*self._serving, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._serving, *self._tasks, return_exceptions=True)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._router, self._zap):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._zap = None
        self._ctx.term()
        path = ipc_path(self.endpoint)
        if self._lock_fd is not None and path is not None:
            # Unlink while still holding the lock, so a daemon starting now cannot lose its fresh socket.
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def detach(self) -> tuple[int | None, int] | None:
        """Stop serving for a re-exec (upgrade/handoff.py): flush the replies sent, close the ZeroMQ sockets,
        and return (lock fd (ipc://), listening fd) still open for the next image; None when libzmq bound it."""
        keep = None
        if self.listen_fd is not None:
            keep = (self._lock_fd, os.dup(self.listen_fd))
        for task in self._serving:
            task.cancel()
        for sock in (self._router, self._zap):
            if sock is not None:
                sock.close(linger=DETACH_LINGER_MS)
        self._router = self._zap = None
        self._ctx.term()  # blocks until the replies are out (or DETACH_LINGER_MS)
        self._ctx = zmq.asyncio.Context()
        self._lock_fd = self.listen_fd = None
        return keep

    def reattach(self, kept: tuple[int | None, int] | None) -> None:
        """Serve again on what detach() kept (a re-exec whose exec failed). Raises as open() does."""
        self._handoff = kept
        self.open()
        self.start()

    # ------------------------------------------------------------------------------------ ZAP

    async def _zap_loop(self) -> None:
        assert self._zap is not None
        is_ipc = ipc_path(self.endpoint) is not None
        while True:
            frames = await self._zap.recv_multipart()
            try:
                reply = auth.authenticate(self._policy, is_ipc, frames)
            except Exception:  # a reply must go out, or the REP socket wedges and no one gets in
                log.exception("control_auth_error")
                reply = auth.internal_error(frames)
            await self._zap.send_multipart(reply)

    # -------------------------------------------------------------------------------- serving

    async def _serve(self) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart(copy=True)
            task = asyncio.create_task(self._handle(frames))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
        envelope: list[bytes] = [identity]
        if len(rest) >= 2 and rest[0] == b"":  # a REQ peer puts an empty delimiter first
            envelope.append(b"")
            rest = rest[1:]
        answer = await self._answer(rest)
        key = (answer.command, answer.outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        self._since_trim += 1
        if self._since_trim >= TRIM_AFTER_REQUESTS and len(self._tasks) <= 1:  # only this one: the burst ended
            self._since_trim = 0
            trim_heap()
        if self._router is None:
            return
        try:
            await self._router.send_multipart([*envelope, answer.reply])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.info("control_client_gone", request_id=answer.request_id)  # it left before its reply
            return
        if isinstance(answer.result, FollowStart):
            self._followers.start(answer.result, self._router, envelope)
        elif isinstance(answer.result, AfterReply):
            answer.result.then(self)

    async def _answer(self, rest: list[bytes]) -> "Answer":
        """Run one request; every failure becomes an error reply with its code (internal for a bug)."""
        request_id: str | None = None
        command = "invalid"
        try:
            if len(rest) != 1:
                raise ProtocolError(E_BAD_REQUEST, f"expected one frame per request, got {len(rest)}")
            req = decode_request(rest[0])
            request_id, command = req.id, req.cmd
            result = await self._dispatch(req)
            if isinstance(result, FollowStart):
                return Answer(encode_reply(request_id, result.first, more=True), request_id, command, "ok", result)
            if isinstance(result, AfterReply):
                return Answer(encode_reply(request_id, result.result), request_id, command, "ok", result)
            return Answer(encode_reply(request_id, result), request_id, command, "ok")
        except ProtocolError as exc:
            log.warning("control_request_rejected", code=exc.code, message=exc.message, size=sum(map(len, rest)))
            return Answer(encode_reply(exc.request_id, error=(exc.code, exc.message)), request_id, command, exc.code)
        except ControlError as exc:
            error = (exc.code, exc.message)
        except ConfigError as exc:
            error = (E_BAD_CONFIG, "config refused, the old one keeps running:\n" + "\n".join(str(i) for i in exc.issues))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("control_command_failed", request_id=request_id)
            error = (E_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return Answer(encode_reply(request_id, error=error), request_id, command, error[0])

    async def _dispatch(self, req: Request) -> Any:
        if self.stopping and req.cmd in REFUSED_WHILE_STOPPING:
            raise ControlError(E_SHUTTING_DOWN, f"procguard is shutting down; {req.cmd} refused")
        log.debug("control_request", cmd=req.cmd, names=req.args.get("names", []))
        return await self._handlers[req.cmd](req)


class Answer(NamedTuple):
    """One request's reply, and what the metrics count it as: (command, "ok" or the error code)."""

    reply: bytes
    request_id: str | None
    command: str
    outcome: str
    result: Any = None
