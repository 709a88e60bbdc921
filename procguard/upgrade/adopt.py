"""The next image's side of a re-exec: rebuild the daemon's state from the snapshot, spawning nothing.

Each process gets back its state, pid, spawn time, counters, health and timers (Process.resume: the
deadlines the previous image set); its pid is the reaper's again, so an exit during the exec (a zombie
waiting since) is handled as any exit once the daemon reaps; its output pipes are read again with
their tail buffers and offsets; its NOTIFY_SOCKET is the same socket. Held sockets and the control
socket's listener and lock are the inherited descriptors (daemon.py passes them on).
"""

import os
import signal
import socket
import time

from procguard.config.model import Config, SocketConfig
from procguard.engine.process import Process
from procguard.engine.records import ReplaceOutcome
from procguard.engine.states import ExitReason, Health, Hold, ProcessState, ReplacePhase, ReplaceTrigger
from procguard.engine.supervisor import Supervisor
from procguard.io.listeners import SocketSet
from procguard.io.stream import Stream
from procguard.io.systemd import SystemdNotifier
from procguard.log import get_logger
from procguard.runtime.realos import RealOS
from procguard.upgrade.fds import close_on_exec
from procguard.log import process_cpu_ms
from procguard.upgrade.state import SavedProcess, SavedStream, Snapshot

log = get_logger()


def systemd_notifier(snap: Snapshot) -> SystemdNotifier | None:
    """NOTIFY_SOCKET was removed from the environment by the first image: it comes from the state."""
    if snap.systemd_address is None:
        return None
    return SystemdNotifier(snap.systemd_address, snap.watchdog_s)


def control_handoff(snap: Snapshot) -> tuple[int | None, int] | None:
    """(lock fd (ipc:// only), listening fd) of the control socket, or None: the new image binds it."""
    if snap.control_listen_fd is None:
        return None
    return snap.control_lock_fd, snap.control_listen_fd


def adopt_sockets(snap: Snapshot, sockets: SocketSet, config: Config) -> None:
    """Hold the inherited held sockets under the config's settings; apply() then binds only what is new."""
    by_name = {c.name: c for c in config.sockets}
    held: dict[str, tuple[SocketConfig, socket.socket]] = {}
    for name, fd in snap.sockets.items():
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        cfg = by_name.get(name)
        if cfg is None:
            log.warning("reexec_socket_dropped", socket=name, reason="not in the config any more")
            sock.close()
            continue
        held[name] = (cfg, sock)
    sockets.adopt(held)


def adopt_processes(snap: Snapshot, sup: Supervisor, osapi: RealOS) -> int:
    """Give every process of the config its saved state; return how many were adopted.

    A saved process the config no longer has (it cannot happen after the pre-flight's check, but a state
    file is input) is stopped: nothing would supervise it. Each process is held by the OS side first (the
    reaper owns its pid, its pipes are read, its NOTIFY_SOCKET kept), then its state is restored; a
    failure there (a bug of the new code, a saved value it does not know) is logged with its traceback
    and the process is adopted without its saved state (`_degraded`): still supervised, never left alone.
    """
    began = time.monotonic()
    by_name = {p.name: p for p in sup.processes()}
    adopted = 0
    for saved in snap.processes:
        proc = by_name.get(saved.name)
        if proc is None:
            _orphaned(saved, osapi)
            continue
        streams = _hold(proc, saved, osapi)
        try:
            _restore(proc, saved)
            _restore_streams(saved, streams)
        except Exception:
            log.exception("reexec_restore_failed", process=saved.name, pid=saved.pid,
                          action="adopted without its saved state")
            _degraded(proc, saved)
        proc.resume(leader_alive=saved.leader_alive)
        if saved.leader_alive:
            sup.process_spawned(proc)  # its health check and memory guard go on
        adopted += 1
    for o in snap.outcomes:
        sup.deployer.outcomes[o.process] = ReplaceOutcome(
            at=o.at, ok=o.ok, trigger=ReplaceTrigger(o.trigger), generation=o.generation, pid=o.pid,
            step=ReplacePhase(o.step), reason=o.reason)
    close_on_exec([fd for fd in snap.fds() if fd not in snap.sockets.values()])
    log.info("processes_adopted", processes=adopted, saved=len(snap.processes), from_version=snap.version,
             took_ms=round((time.monotonic() - began) * 1e3, 1), cpu_ms=process_cpu_ms())
    return adopted


def _hold(proc: Process, saved: SavedProcess, osapi: RealOS) -> "dict[str, tuple[Stream, SavedStream]]":
    """The OS side: the reaper owns the pid, every pipe is read again, the NOTIFY_SOCKET is the same.
    Return each stream with its saved counterpart, for _restore_streams."""
    notify = None
    if saved.notify_fd is not None and saved.notify_name is not None:
        notify = (saved.notify_fd, saved.notify_name)
    osapi.adopt(proc, saved.pid if saved.leader_alive else None, notify)
    streams = {s.name: s for s in osapi.output.streams_of(proc.program, proc.config) if s is not None}
    out = {}
    for saved_stream in saved.streams:
        stream = streams.get(saved_stream.name)
        if stream is None:
            _close_all(saved_stream.pipe_fds)
            continue
        for rfd in saved_stream.pipe_fds:
            osapi.output.adopt_pipe(rfd, stream)
        out[saved_stream.name] = (stream, saved_stream)
    return out


def _restore_streams(saved: SavedProcess, streams: "dict[str, tuple[Stream, SavedStream]]") -> None:
    """Tail buffers and counters (synchronous: the pipes adopted above are read once the loop runs)."""
    for stream, saved_stream in streams.values():
        stream.restore(saved_stream.tail, saved_stream.in_file, saved_stream.at_line_start)
        stream.offset = saved_stream.offset
        stream.dropped = saved_stream.dropped


def _degraded(proc: Process, saved: SavedProcess) -> None:
    """A process whose saved state could not be restored: RUNNING under its pid when its leader is alive,
    so that its exit is handled as any exit (restart, backoff); else the saved state when it is one this
    code knows, else STOPPED (fail closed: never start what may have been stopped on purpose)."""
    if saved.leader_alive and saved.pid is not None:
        state = ProcessState.RUNNING
    else:
        state = ProcessState(saved.state) if saved.state in ProcessState.__members__ else ProcessState.STOPPED
    proc.state = state
    proc.pid = saved.pid if saved.leader_alive else None
    proc.spawned_at = saved.spawned_at if isinstance(saved.spawned_at, float) else time.monotonic()
    # A BACKOFF keeps its retry (at once if the saved one is unusable): resume() re-arms it.
    proc.retry_at = saved.retry_at if isinstance(saved.retry_at, float) else time.monotonic()
    proc.set_reason(Hold.NONE, "adopted after a re-exec without its saved state (see the daemon's log)")


# Process attributes that hold the saved fields of the same name (the state machine's public fields).
RESTORED = ("pid", "spawned_at", "exit_status", "failures", "failed_starts", "retry_at", "health_reason",
            "health_failures", "status_text", "restarts", "generation")


def _restore(proc: Process, saved: SavedProcess) -> None:
    proc.state = ProcessState(saved.state)
    for name in RESTORED:
        setattr(proc, name, getattr(saved, name))
    proc.set_reason(Hold[saved.hold], saved.reason)
    proc.health = None if saved.health is None else Health(saved.health)
    proc.exits = {reason: saved.exits.get(str(reason), 0) for reason in ExitReason}


def _orphaned(saved: SavedProcess, osapi: RealOS) -> None:
    log.error("reexec_process_unknown", process=saved.name, pid=saved.pid,
              reason="the saved state names a process the config does not have; stopping it")
    if saved.pid is not None and saved.leader_alive:
        osapi.send_signal(saved.pid, signal.SIGTERM, group=True)
    fds = [fd for s in saved.streams for fd in s.pipe_fds]
    if saved.notify_fd is not None:
        fds.append(saved.notify_fd)
    _close_all(fds)


def _close_all(fds: "tuple[int, ...] | list[int]") -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
