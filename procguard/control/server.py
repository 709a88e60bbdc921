"""The control socket: a ZeroMQ ROUTER on the event loop, ZAP authentication, dispatch to the Supervisor.

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
import base64
import errno
import fcntl
import grp
import os
import pwd
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog
import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils import z85

from procguard.runtime import procfs
from procguard.observe.alerts import AlertManager
from procguard.config.model import Config, ConfigDiff
from procguard.errors import ConfigError, ControlError, ProcguardError
from procguard.observe.events import Event, EventBus
from procguard.log import LogRing
from procguard.log import dropped_lines as log_dropped_lines
from procguard.io.output import Output
from procguard.io.stream import Follower
from procguard.engine.records import ActionResult, ProcessStatus, ReplaceOutcome
from procguard.protocol import (
    E_BAD_ARGS, E_BAD_CONFIG, E_BAD_REQUEST, E_INTERNAL, E_NO_SUCH_PROCESS, E_SHUTTING_DOWN, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, VERSION,
    ProtocolError, Request, decode_request, default_endpoint, encode_reply, ipc_path,
)
from procguard.engine.supervisor import Supervisor

log = structlog.get_logger()

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27 (ZAP)
ZAP_DOMAIN = "procguard"
# The wide status view samples CPU over this window, off the event loop.
CPU_SAMPLE_S = 0.2
# tail -f: at most this much per pushed message (a firehose shows its newest bytes and an offset gap),
# this many messages queued per slow client (ZMQ_SNDHWM) before pushes are dropped, and this many
# followers per stream.
FOLLOW_MAX_PUSH = 256 * 1024
SEND_HWM = 64
MAX_FOLLOWERS = 16
MAX_EVENT_FOLLOWERS = 64  # `events -f` clients (procguardctl top among them)
# Commands refused once shutdown began (status, pid and version still answer while programs stop).
# Commands acting on named processes (start, stop, ...), as opposed to the daemon or its config.
ACTIONS = frozenset({"start", "stop", "restart", "deploy", "signal", "reload_app"})
REFUSED_WHILE_STOPPING = frozenset({"start", "restart", "deploy", "reload", "signal", "reload_app", "update",
                                    "add"})
DEPLOY_OUTPUT_LINES = 20  # a failed deploy's reply carries this many last lines of the process's output


class ControlSetupError(ProcguardError):
    """The control socket could not be set up (endpoint in use, bad keys, permissions)."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who may talk to the daemon: uids and gids admitted over ipc://, public keys over tcp://."""

    uids: frozenset[int]
    gid: int | None
    group_members: frozenset[str]
    client_keys: frozenset[bytes]

    def admits_ipc(self, uid: int, gid: int) -> bool:
        if uid in self.uids:
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            return pwd.getpwuid(uid).pw_name in self.group_members
        except KeyError:
            return False


def _peer_policy(config: Config) -> Peer:
    members: frozenset[str] = frozenset()
    if config.control_gid is not None:
        try:
            members = frozenset(grp.getgrgid(config.control_gid).gr_mem)
        except KeyError:
            pass
    keys: frozenset[bytes] = frozenset()
    if config.curve is not None:
        keys = frozenset(zmq.auth.load_certificates(config.curve.authorized_clients))
    return Peer(uids=frozenset({0, os.geteuid()}), gid=config.control_gid, group_members=members, client_keys=keys)


def outcome_dict(o: ReplaceOutcome | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"at": o.at, "ok": o.ok, "trigger": str(o.trigger), "generation": o.generation, "pid": o.pid,
            "step": str(o.step), "reason": o.reason}


def status_dict(st: ProcessStatus) -> dict[str, Any]:
    replace = {"generation": st.generation, "next": None if st.next is None else status_dict(st.next),
               "replace_phase": None if st.replace_phase is None else str(st.replace_phase),
               "last_deploy": outcome_dict(st.last_deploy)}
    return replace | {
        "name": st.name, "program": st.program, "state": str(st.state), "pid": st.pid,
        "started_at": st.started_at, "uptime_s": st.uptime_s, "exit_status": st.exit_status,
        "reason": st.reason, "retry_in_s": st.retry_in_s, "failures": st.failures,
        "health": st.health, "health_reason": st.health_reason, "status_text": st.status_text,
        "autostart": st.autostart, "priority": st.priority, "restarts": st.restarts,
    }


def action_dict(r: ActionResult, action: str) -> dict[str, Any]:
    return {"name": r.name, "action": action, "ok": r.ok, "state": str(r.state), "message": r.message,
            "error": r.error}


def unknown_dicts(names: list[str], **fields: Any) -> list[dict[str, Any]]:
    """One entry per name that matched nothing, after the results of the names that did."""
    return [{"name": n, **fields, "error": E_NO_SUCH_PROCESS} for n in names]


class Followed(Protocol):
    """What tail -f follows: a process's output Stream, or the daemon's own log (LogRing)."""

    offset: int
    followers: set[Follower]

    def tail(self) -> bytes: ...


def tree_usage(pids: list[int], window_s: float = CPU_SAMPLE_S) -> dict[int, dict[str, Any]]:
    """RSS and CPU% of each pid's whole process tree, CPU sampled over window_s. Blocking: run off-loop."""
    import psutil  # only `status -l` needs it: the idle daemon never loads it (#17)

    trees: dict[int, list[psutil.Process]] = {}
    for pid in pids:
        try:
            leader = psutil.Process(pid)
            trees[pid] = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            continue

    def cpu(p: psutil.Process) -> float | None:
        try:
            t = p.cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            return None

    before = {id(p): cpu(p) for ps in trees.values() for p in ps}
    t0 = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - t0
    out: dict[int, dict[str, Any]] = {}
    for pid, ps in trees.items():
        rss = 0
        cpu_s = 0.0
        for p in ps:
            after = cpu(p)
            start = before.get(id(p))
            if after is not None and start is not None:
                cpu_s += max(0.0, after - start)
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        out[pid] = {"rss_bytes": rss, "cpu_percent": round(100.0 * cpu_s / elapsed, 1), "tree_pids": len(ps)}
    return out


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
    ) -> None:
        self.config = config
        self._output = output
        self._mainlog = mainlog
        self._followers: dict[Follow, Followed] = {}
        self._events = events
        self._alerts = alerts
        self._event_followers: dict[Follow, Callable[[], None]] = {}  # -> unsubscribe
        self.endpoint = config.control
        self._sup = supervisor
        self._reload = reload
        self._request_shutdown = request_shutdown
        self._policy = _peer_policy(config)
        self._ctx = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self._zap: zmq.asyncio.Socket | None = None
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: list[asyncio.Task[None]] = []
        self.stopping = False
        # (command, outcome) -> requests answered; outcome "ok" or the error code (metrics).
        self.requests: dict[tuple[str, str], int] = {}

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
        zap.bind(ZAP_ENDPOINT)
        router = self._router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)  # bigger frames drop the peer before buffering
        # Sending to a peer that left raises EHOSTUNREACH instead of vanishing: how tail -f learns it ended.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.sndhwm = SEND_HWM
        router.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # fail closed: no handler means no entry
        if self.endpoint.startswith("tcp://"):
            assert self.config.curve is not None  # config.py refuses tcp:// without [procguard.curve]
            try:
                public, secret = zmq.auth.load_certificate(self.config.curve.server_secret_key)
            except (OSError, ValueError) as exc:
                raise ControlSetupError(f"{self.config.curve.server_secret_key}: cannot load the server key: {exc}") from None
            if not secret:
                raise ControlSetupError(f"{self.config.curve.server_secret_key}: no secret key in this file "
                                        "(use the NAME.key_secret written by procguardctl keygen)")
            router.curve_server = True
            router.curve_publickey = public
            router.curve_secretkey = secret
        self._bind(router, path)

    def _bind(self, router: zmq.asyncio.Socket, path: str | None) -> None:
        old_umask = os.umask(0o117) if path is not None else None  # the socket is born 0660
        try:
            router.bind(self.endpoint)
        except zmq.ZMQError as exc:
            raise ControlSetupError(f"cannot bind the control socket {self.endpoint}: {exc}") from None
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
        for follow, stream in list(self._followers.items()):
            follow.end(stream, "procguard is shutting down")
        for event_follow in list(self._event_followers):
            assert isinstance(event_follow, EventFollow)
            event_follow.finish("procguard is shutting down")
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

    # ------------------------------------------------------------------------------------ ZAP

    async def _zap_loop(self) -> None:
        assert self._zap is not None
        while True:
            frames = await self._zap.recv_multipart()
            try:
                reply = self._authenticate(frames)
            except Exception:  # a reply must go out, or the REP socket wedges and no one gets in
                log.exception("control_auth_error")
                reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"internal error", b"", b""]
            await self._zap.send_multipart(reply)

    def _authenticate(self, frames: list[bytes]) -> list[bytes]:
        """Answer one ZAP request (RFC 27): 200 admits, 400 refuses."""
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]

        def answer(ok: bool, text: str, user: str = "") -> list[bytes]:
            return [version, request_id, b"200" if ok else b"400", text.encode(), user.encode(), b""]

        if domain != ZAP_DOMAIN.encode():
            return answer(False, "wrong domain")
        if mechanism == b"CURVE":
            key = z85.encode(credentials[0]) if credentials else b""
            if key in self._policy.client_keys:
                return answer(True, "OK", f"curve:{key.decode()}")
            log.warning("control_peer_refused", address=address.decode(errors="replace"), reason="unknown CURVE key")
            return answer(False, "client key not authorised")
        if mechanism == b"NULL" and ipc_path(self.endpoint) is not None:
            # libzmq describes an ipc peer as "localhost:UID:GID:PID" from SO_PEERCRED.
            parts = address.decode(errors="replace").split(":")
            try:
                uid, gid, pid = int(parts[1]), int(parts[2]), int(parts[3])
            except (IndexError, ValueError):
                log.warning("control_peer_refused", address=address.decode(errors="replace"), reason="no peer credentials")
                return answer(False, "no peer credentials")
            if self._policy.admits_ipc(uid, gid):
                return answer(True, "OK", str(uid))
            log.warning("control_peer_refused", uid=uid, gid=gid, pid=pid,
                        reason="not root, the daemon's user, or in control_group")
            return answer(False, "uid not authorised")
        return answer(False, f"mechanism {mechanism.decode(errors='replace')} not accepted here")

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
        request_id: str | None = None
        result: Any = None
        command, outcome = "invalid", "ok"
        try:
            if len(rest) != 1:
                raise ProtocolError(E_BAD_REQUEST, f"expected one frame per request, got {len(rest)}")
            req = decode_request(rest[0])
            request_id, command = req.id, req.cmd
            result = await self._dispatch(req)
            if isinstance(result, FollowStart):
                reply = encode_reply(request_id, result.first, more=True)
            else:
                reply = encode_reply(request_id, result)
        except ProtocolError as exc:
            log.warning("control_request_rejected", code=exc.code, message=exc.message, size=sum(map(len, rest)))
            reply, outcome = encode_reply(exc.request_id, error=(exc.code, exc.message)), exc.code
        except ControlError as exc:
            reply, outcome = encode_reply(request_id, error=(exc.code, exc.message)), exc.code
        except ConfigError as exc:
            outcome = E_BAD_CONFIG
            reply = encode_reply(request_id, error=(E_BAD_CONFIG, "config refused, the old one keeps running:\n"
                                                    + "\n".join(str(i) for i in exc.issues)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("control_command_failed", request_id=request_id)
            outcome = E_INTERNAL
            reply = encode_reply(request_id, error=(E_INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))
        self.requests[command, outcome] = self.requests.get((command, outcome), 0) + 1
        if self._router is not None:
            try:
                await self._router.send_multipart([*envelope, reply])
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                log.info("control_client_gone", request_id=request_id)  # it left before its reply
                return
            if isinstance(result, FollowStart):
                self._follow(result, envelope)

    async def _dispatch(self, req: Request) -> Any:
        args = req.args
        names: list[str] = args.get("names", [])
        if self.stopping and req.cmd in REFUSED_WHILE_STOPPING:
            raise ControlError(E_SHUTTING_DOWN, f"procguard is shutting down; {req.cmd} refused")
        log.debug("control_request", cmd=req.cmd, names=names)
        if req.cmd in ACTIONS or (req.cmd in ("status", "pid") and names):
            # A request naming known and unknown processes acts on the known ones and reports each unknown
            # name as an entry of its own (supervisorctl does the same); all unknown is no_such_process.
            names, unknown = self._known(names)
            if req.cmd == "status":
                return (await self._status(names, bool(args.get("long")), bool(args.get("usage")))
                        + unknown_dicts(unknown))
            if req.cmd == "pid":
                return [{"name": s.name, "pid": s.pid} for s in self._sup.status(names)] + unknown_dicts(unknown, pid=None)
            return await self._act(req.cmd, args, names) + unknown_dicts(
                unknown, action=req.cmd, ok=False, state=None, message="no such process")
        if req.cmd == "status":
            return await self._status(names, bool(args.get("long")), bool(args.get("usage")))
        if req.cmd == "reload":
            return _diff_dict(await self._reload())
        if req.cmd == "reread":
            return _diff_dict(await self._sup.reread())
        if req.cmd == "update":
            diff, unknown = await self._sup.update(names)
            return {**_diff_dict(diff), "unknown": unknown}
        if req.cmd in ("add", "remove"):
            change = self._sup.add if req.cmd == "add" else self._sup.remove
            out = []
            for name in names:
                error = await change(name)
                out.append({"name": name, "action": req.cmd, "ok": error is None, "error": error})
            return out
        if req.cmd == "pid":
            return {"pid": os.getpid()}
        if req.cmd == "version":
            return {"version": VERSION, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                    "log_dropped_lines": log_dropped_lines()}
        if req.cmd == "tail":
            return self._tail(args["name"], args.get("stream", "stdout"), bool(args.get("follow")), req.id)
        if req.cmd == "maintail":
            return self._maintail(bool(args.get("follow")), req.id)
        if req.cmd == "events":
            return self._events_since(names, args.get("limit"), bool(args.get("follow")), req.id)
        if req.cmd == "alert_test":
            if self._alerts is None:
                raise ControlError(E_BAD_ARGS, "this daemon sends no alerts")
            return await self._alerts.test(args["name"])
        if req.cmd == "logreopen":
            return {"reopened": self._require_output().reopen()}
        if req.cmd == "logrotate":
            return {"rotated": self._require_output().rotate(p.name for p in self._sup.resolve(names))}
        if req.cmd == "shutdown":
            # Reply first; the daemon's main loop then stops every program as on SIGTERM.
            asyncio.get_running_loop().call_soon(self._request_shutdown)
            return {"shutting_down": True, "pid": os.getpid()}
        raise AssertionError(f"command {req.cmd} is in COMMANDS but has no handler")

    def _known(self, names: list[str]) -> tuple[list[str], list[str]]:
        """The names to act on and the unknown ones; every name unknown is a no_such_process error."""
        procs, unknown = self._sup.resolve_known(names)
        if unknown and not procs:
            raise ControlError(E_NO_SUCH_PROCESS, f"no such process: {', '.join(unknown)}")
        return (names if not unknown else [p.name for p in procs]), unknown

    async def _act(self, cmd: str, args: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
        if cmd == "start":
            return [action_dict(r, "start") for r in await self._sup.start(names)]
        if cmd == "stop":
            return [action_dict(r, "stop") for r in await self._sup.stop(names)]
        if cmd == "restart":
            stopped, started = await self._sup.restart(names)
            return [*(action_dict(r, "stop") for r in stopped), *(action_dict(r, "start") for r in started)]
        if cmd == "deploy":
            return [self._deploy_dict(r) for r in await self._sup.deploy(names)]
        if cmd == "reload_app":
            return [action_dict(r, "reload_app") for r in await self._sup.reload_app(names)]
        return [action_dict(r, "signal") for r in self._sup.signal(args["signal"], names)]

    async def _status(self, names: list[str], long: bool, usage: bool) -> list[dict[str, Any]]:
        statuses = [status_dict(s) for s in self._sup.status(names)]
        if self._output is not None:
            for st in statuses:
                st["output_dropped_bytes"] = self._output.dropped(st["name"])
        if long:
            pids = [s["pid"] for s in statuses if s["pid"]]
            sampled = await asyncio.to_thread(tree_usage, pids)
            for s in statuses:
                s.update(sampled.get(s["pid"], {"rss_bytes": None, "cpu_percent": None, "tree_pids": 0}))
        elif usage:  # procguardctl top: one /proc pass, no sampling window (CPU% from deltas)
            trees = await asyncio.to_thread(procfs.tree_usage, [s["pid"] for s in statuses if s["pid"]])
            for s in statuses:
                t = trees.get(s["pid"])
                s.update({"cpu_s": t.cpu_s, "rss_bytes": t.rss_bytes, "fds": t.fds, "tree_pids": t.pids} if t
                         else {"cpu_s": None, "rss_bytes": None, "fds": None, "tree_pids": 0})
        return statuses

    def _deploy_dict(self, r: ActionResult) -> dict[str, Any]:
        out: dict[str, Any] = {"name": r.name, "action": "deploy", "ok": r.ok, "state": str(r.state),
                               "message": r.message, "pid": r.pid, "generation": r.generation, "step": str(r.step),
                               "overlapped": r.overlapped}
        if not r.ok and self._output is not None:
            # The next generation's last words: its own tail (the current generation writes into the same
            # streams meanwhile); else, stopped then started, the process's.
            own = None if r.tried is None else self._output.generation_output(r.name, r.tried, DEPLOY_OUTPUT_LINES)
            if own is not None:
                out["output"] = own
                return out
            proc = self._sup.resolve([r.name])[0]
            lines: list[str] = []
            for stream in self._output.streams_of(proc.program, proc.config):
                if stream is not None:
                    lines += stream.tail().decode(errors="replace").splitlines()[-DEPLOY_OUTPUT_LINES:]
            out["output"] = lines[-DEPLOY_OUTPUT_LINES:]
        return out

    # ------------------------------------------------------------------------------------ tail

    def _require_output(self) -> Output:
        if self._output is None:
            raise ControlError(E_INTERNAL, "this daemon captures no output")
        return self._output

    def _tail(self, name: str, which: str, follow: bool, request_id: str) -> "dict[str, Any] | FollowStart":
        procs = self._sup.resolve([name])
        if len(procs) != 1 or name == "all":
            raise ControlError(E_BAD_ARGS, f"tail takes one process; {name} is {len(procs)}: "
                                           + ", ".join(p.name for p in procs[:5]))
        proc = procs[0]
        if which == "stderr" and proc.program.redirect_stderr:
            raise ControlError(E_BAD_ARGS, f"{proc.name} has redirect_stderr = true: its stderr is in stdout")
        stream = self._require_output().streams_of(proc.program, proc.config)[0 if which == "stdout" else 1]
        assert stream is not None
        first = {"name": proc.name, "stream": which, "data": _b64(stream.tail()),
                 "offset": stream.offset, "dropped_bytes": stream.dropped}
        if not follow:
            return first
        if len(stream.followers) >= MAX_FOLLOWERS:
            raise ControlError(E_BAD_ARGS, f"{proc.name} {which} already has {MAX_FOLLOWERS} followers")
        return FollowStart(first, stream, request_id)

    def _maintail(self, follow: bool, request_id: str) -> "dict[str, Any] | FollowStart":
        """The daemon's own newest log lines (LogRing), and with follow every new one, as tail -f does."""
        if self._mainlog is None:
            raise ControlError(E_INTERNAL, "this daemon keeps no log lines")
        first = {"name": "procguard", "data": _b64(self._mainlog.tail()), "offset": self._mainlog.offset}
        if not follow:
            return first
        if len(self._mainlog.followers) >= MAX_FOLLOWERS:
            raise ControlError(E_BAD_ARGS, f"the daemon's log already has {MAX_FOLLOWERS} followers")
        return FollowStart(first, self._mainlog, request_id)

    # ---------------------------------------------------------------------------------- events

    def _events_since(self, names: list[str], limit: int | None, follow: bool,
                      request_id: str) -> "dict[str, Any] | FollowStart":
        if self._events is None:
            raise ControlError(E_INTERNAL, "this daemon publishes no events")
        recent = self._events.recent(names, limit)
        first = {"events": [e.to_wire() for e in recent]}
        if not follow:
            return first
        if len(self._event_followers) >= MAX_EVENT_FOLLOWERS:
            raise ControlError(E_BAD_ARGS, f"the event stream already has {MAX_EVENT_FOLLOWERS} followers")
        return FollowStart(first, None, request_id, tuple(names), recent[-1].seq if recent else 0)

    def _follow_events(self, start: "FollowStart", envelope: list[bytes]) -> None:
        """Subscribe once the first reply is out; push what was published meanwhile first (no gap)."""
        assert self._router is not None and self._events is not None
        follow = EventFollow(self._router, envelope, start.request_id, self._unfollow_events, start.names)
        for event in self._events.recent(start.names):
            if event.seq > start.after_seq:
                follow.event(event)
        self._event_followers[follow] = self._events.subscribe(follow.event)

    def _unfollow_events(self, follow: "Follow") -> None:
        unsubscribe = self._event_followers.pop(follow, None)
        if unsubscribe is not None:
            unsubscribe()

    def _follow(self, start: "FollowStart", envelope: list[bytes]) -> None:
        assert self._router is not None
        if start.stream is None:
            self._follow_events(start, envelope)
            return
        follow = Follow(self._router, envelope, start.request_id, self._unfollow)
        self._followers[follow] = start.stream
        start.stream.followers.add(follow)

    def _unfollow(self, follow: "Follow") -> None:
        stream = self._followers.pop(follow, None)
        if stream is not None:
            stream.followers.discard(follow)


def _diff_dict(diff: ConfigDiff) -> dict[str, list[str]]:
    return {"added": list(diff.added), "changed": list(diff.changed), "removed": list(diff.removed)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class FollowStart:
    """tail -f (or events -f): the first reply, then the stream to follow once it is sent."""

    first: dict[str, Any]
    stream: Followed | None  # None: the event stream, of `names`, from after `after_seq`
    request_id: str
    names: tuple[str, ...] = ()
    after_seq: int = 0


class Follow:
    """One `tail -f` client: every new chunk of its stream is pushed as a reply with "more": true.

    Pushes never wait: a client too slow to keep up (SEND_HWM messages queued) loses chunks, which it
    sees as a gap in the offsets; a client that left (EHOSTUNREACH) is dropped on the next push.
    """

    def __init__(self, router: zmq.asyncio.Socket, envelope: list[bytes], request_id: str,
                 on_gone: Callable[["Follow"], None]) -> None:
        self._router = router
        self._envelope = envelope
        self._request_id = request_id
        self._on_gone = on_gone

    def __call__(self, data: bytes, offset: int) -> None:
        if len(data) > FOLLOW_MAX_PUSH:
            data = data[-FOLLOW_MAX_PUSH:]
        self._push({"data": _b64(data), "offset": offset}, more=True)

    def end(self, stream: Followed, why: str) -> None:
        self._push({"data": "", "offset": stream.offset, "end": why}, more=False)
        self._on_gone(self)

    def _push(self, result: dict[str, Any], more: bool) -> None:
        frames = [*self._envelope, encode_reply(self._request_id, result, more=more)]
        # With NOBLOCK, zmq.asyncio returns a future that is already done (sent, Again or EHOSTUNREACH).
        sent = cast("asyncio.Future[Any]", self._router.send_multipart(frames, flags=zmq.NOBLOCK))
        sent.add_done_callback(self._sent)

    def _sent(self, fut: "asyncio.Future[Any]") -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH:
            self._on_gone(self)
        # zmq.Again: the client is behind; this chunk is skipped (its offset shows the gap).


class EventFollow(Follow):
    """One `events -f` client: each new event about its names is pushed as {"events": [event]}, "more": true."""

    def __init__(self, router: zmq.asyncio.Socket, envelope: list[bytes], request_id: str,
                 on_gone: Callable[["Follow"], None], names: tuple[str, ...]) -> None:
        super().__init__(router, envelope, request_id, on_gone)
        self._names = names

    def event(self, event: Event) -> None:
        if event.matches(self._names):
            self._push({"events": [event.to_wire()]}, more=True)

    def finish(self, why: str) -> None:
        self._push({"events": [], "end": why}, more=False)
        self._on_gone(self)
