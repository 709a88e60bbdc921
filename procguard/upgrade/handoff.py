"""`procguardctl reexec`: check that the installed procguard can take over, save the state, exec it in place.

The order (docs/upgrade.md):
1. refuse while something is half-done that the state does not describe (a stop, a spawn, a replace),
   or when the config files differ from the config in force (the next image reads them);
2. pre-flight in a child process: the installed procguard imports, loads the config as --check does,
   and reads this state format (`python -m procguard.upgrade.preflight`); its words are the refusal;
3. reply; then, in one step of the loop: RELOADING=1 to systemd, close the ZeroMQ sockets (the replies
   flushed, the listening socket and its lock kept), save the state into a
   memfd, clear FD_CLOEXEC on every descriptor the state names, and execv `python -m procguard` with the
   same arguments plus `--adopt-state-fd N`. Same pid: children see nothing, and what they exit with
   meanwhile waits as a zombie for the next image's reaper.
"""

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

from procguard.argv import ADOPT_FLAG
from procguard.config.diff import diff_configs
from procguard.config.load import load_config
from procguard.config.model import Config
from procguard.control.handlers import AfterReply, Detachable
from procguard.engine.process import Process
from procguard.engine.states import ProcessState
from procguard.engine.supervisor import Supervisor
from procguard.errors import ConfigError, ControlError
from procguard.io.systemd import SystemdNotifier
from procguard.log import get_logger
from procguard.protocol import E_REEXEC_REFUSED, VERSION
from procguard.runtime.realos import RealOS
from procguard.upgrade.fds import keep_across_exec, state_fd
from procguard.log import process_cpu_ms
from procguard.upgrade.state import FORMAT, SavedOutcome, SavedProcess, SavedStream, Snapshot, dumps

log = get_logger()

PREFLIGHT_TIMEOUT_S = 60.0
PREFLIGHT_OUTPUT_LINES = 12  # of the pre-flight's output, in a refusal
SYSTEMD_FLUSH_S = 2.0
INHERIT_FLUSH_S = 5.0  # at most this long for a stalled journal (the bytes are dropped then, as output.py does)


class Reexec:
    """The daemon's re-exec: one per daemon, built once everything it saves exists."""

    def __init__(self, *, config: Config, supervisor: Supervisor, osapi: RealOS,
                 systemd: Callable[[], SystemdNotifier | None], argv: list[str]) -> None:
        self._config = config  # as started: the control socket keeps these settings (daemon._reload_command)
        self._sup = supervisor
        self._os = osapi
        self._systemd = systemd
        self._argv = without_adopt_flag(argv)
        self._carry: int | None = None  # the memfd the last passed pre-flight wrote its parsed config into

    async def request(self) -> AfterReply:
        """Check, then return the reply and the exec to run once it is sent; ControlError(reexec_refused)."""
        # Busy again after the awaits: a command may have begun a stop or a spawn meanwhile.
        reason = self._busy() or await self._config_changed() or await self._preflight() or self._busy()
        if reason is not None:
            self._drop_carry()
            log.warning("reexec_refused", reason=reason)
            raise ControlError(E_REEXEC_REFUSED, f"re-exec refused, nothing changed: {reason}")
        return AfterReply({"reexec": True, "pid": os.getpid(), "version": VERSION}, self.exec_now)

    def _busy(self) -> str | None:
        """Why the state cannot be saved now (something under way that it does not describe), or None."""
        for st, p in zip(self._sup.status(), self._sup.processes()):
            if p.state == ProcessState.STOPPING:
                return f"{p.name} is stopping; try again once it has stopped"
            if p.state == ProcessState.STARTING and p.pid is None:
                return f"{p.name} is being spawned; try again in a moment"
            if st.replace_phase is not None or p.trial or p.retiring or p.orphans.groups or p.draining:
                return f"{p.name} is being replaced (deploy, restart or recycle); try again once it is done"
        return None

    async def _config_changed(self) -> str | None:
        """The next image reads the config files: they must say what is in force now."""
        path = self._sup.config.path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            return "the config files are refused:\n" + "\n".join(str(i) for i in exc.issues)
        diff = diff_configs(self._sup.config, new)
        changed = [*diff.added, *diff.changed, *diff.removed]
        if changed or new.sockets != self._sup.config.sockets:
            what = ", ".join(changed) if changed else "[socket.*]"
            return f"the config files differ from the config in force ({what}); `procguardctl reload` first"
        if (new.control, new.control_group, new.curve) != (self._config.control, self._config.control_group,
                                                            self._config.curve):
            return "the control socket's settings changed since start-up; they need a restart of the daemon"
        return None

    async def _preflight(self) -> str | None:
        """Run the installed procguard's pre-flight in a child; its output when it refuses, else None."""
        import tempfile  # on demand: it imports shutil, bz2 and lzma, which an idle daemon does without (#17)

        self._drop_carry()
        # Given to the pre-flight (pass_fds), then kept across the exec for the next image (carried.py).
        carry = self._carry = os.memfd_create("procguard-config", os.MFD_CLOEXEC)
        argv = [sys.executable, "-m", "procguard.upgrade.preflight", "-c", self._sup.config.path,
                "--state-format", str(FORMAT), "--carry-fd", str(carry)]
        with tempfile.TemporaryFile() as out:
            # spawn.popen: stdin /dev/null, stderr into stdout, its own process group, no other descriptor
            # but the memfd for the parsed config.
            pid, exited = await self._os.spawn_command(argv, stdout=out.fileno(), env=dict(os.environ),
                                                       pass_fds=(carry,))
            try:
                async with asyncio.timeout(PREFLIGHT_TIMEOUT_S):
                    code = await asyncio.shield(exited)
            except TimeoutError:
                self._os.send_signal(pid, signal.SIGKILL, group=True)
                return f"the pre-flight ({' '.join(argv[1:])}) did not finish within {PREFLIGHT_TIMEOUT_S:g}s"
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
        if code == 0:
            log.info("reexec_preflight_passed", output=text.splitlines()[-1:] or "")
            return None
        self._drop_carry()
        lines = "\n".join(text.splitlines()[-PREFLIGHT_OUTPUT_LINES:])
        return f"the installed procguard cannot take over (pre-flight exit status {code}):\n{lines}"

    def _drop_carry(self) -> None:
        if self._carry is not None:
            os.close(self._carry)
            self._carry = None

    def exec_now(self, server: Detachable) -> None:
        """Save the state and exec the installed procguard in place (server: the control server that sent
        the reply). Returns only when exec failed (logged; the daemon then serves on as it was)."""
        # Nothing awaited since request()'s last check, unless the reply's send had to wait (a full queue).
        reason = self._busy()
        if reason is not None:
            self._drop_carry()
            log.warning("reexec_aborted", reason=reason)
            return
        began, began_cpu = time.monotonic(), process_cpu_ms()
        systemd = self._systemd()
        if systemd is not None:
            systemd.reloading()
            systemd.flush(SYSTEMD_FLUSH_S)  # exec would drop what a busy systemd has not taken yet
        control = server.detach()
        # Output bound for the daemon's own stdout/stderr (inherit, journal) waits in a writer thread's queue,
        # which exec would drop: write it first. The pipes keep what is not read yet.
        self._os.output.flush_inherited(INHERIT_FLUSH_S)
        # No reaping here: an exit handled now could begin a spawn that exec would cut off. Children that
        # exit from now on wait as zombies for the next image's reaper (the daemon is their parent).
        snap = snapshot(self._sup, self._os, control, systemd, self._argv, self._carry)
        data = dumps(snap)
        fd = state_fd(data)
        keep = [*snap.fds(), fd, *([] if self._carry is None else [self._carry])]
        keep_across_exec(keep)
        argv = [sys.executable, "-m", "procguard", *self._argv, ADOPT_FLAG, str(fd)]
        log.info("daemon_reexec", version=VERSION, pid=os.getpid(), processes=len(snap.processes), fds=len(keep),
                 state_bytes=len(data), saved_ms=round((time.monotonic() - began) * 1e3, 1),
                 saved_cpu_ms=round(process_cpu_ms() - began_cpu, 1), cpu_ms=process_cpu_ms(), argv=argv)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, argv)
        except OSError as exc:
            log.error("reexec_failed", error=exc.strerror or str(exc), action="serving on as before")
            os.close(fd)
            self._drop_carry()
            server.reattach(control)
            if systemd is not None:
                systemd.ready(self._sup.counts())


def without_adopt_flag(argv: list[str]) -> list[str]:
    """The daemon's arguments without the --adopt-state-fd an earlier re-exec added."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == ADOPT_FLAG:
            skip = True
        elif not arg.startswith(ADOPT_FLAG + "="):
            out.append(arg)
    return out


def snapshot(sup: Supervisor, osapi: RealOS, control: tuple[int | None, int] | None, systemd: SystemdNotifier | None,
             argv: list[str], config_fd: int | None = None) -> Snapshot:
    """The whole state the next image adopts (state.py), naming every descriptor it inherits."""
    pipes: dict[int, list[int]] = {}
    for rfd, stream in osapi.output.pipes().items():
        pipes.setdefault(id(stream), []).append(rfd)
    outcomes = tuple(SavedOutcome(process=name, at=o.at, ok=o.ok, trigger=str(o.trigger), generation=o.generation,
                                  pid=o.pid, step=str(o.step), reason=o.reason)
                     for name, o in sup.deployer.outcomes.items())
    return Snapshot(
        version=VERSION, pid=os.getpid(), config_path=sup.config.path, argv=tuple(argv),
        control_lock_fd=None if control is None else control[0],
        control_listen_fd=None if control is None else control[1],
        sockets={name: sock.fileno() for name, sock in osapi.sockets.held().items()},
        processes=tuple(_saved(p, osapi, pipes) for p in sup.processes()),
        outcomes=outcomes,
        systemd_address=None if systemd is None else systemd.address,
        watchdog_s=None if systemd is None else systemd.watchdog_s,
        config_fd=config_fd,
    )


def _saved(p: Process, osapi: RealOS, pipes: dict[int, list[int]]) -> SavedProcess:
    streams = []
    for s in osapi.output.streams_of(p.program, p.config):
        if s is not None:
            tail, in_file, at_line_start = s.saved()
            streams.append(SavedStream(name=s.name, tail=tail, in_file=in_file, at_line_start=at_line_start,
                                       offset=s.offset, dropped=s.dropped, pipe_fds=tuple(pipes.get(id(s), ()))))
    notify = osapi.notify_socket(p)
    return SavedProcess(
        name=p.name, program=p.program.name, state=str(p.state), pid=p.pid, leader_alive=p.live_pid is not None,
        spawned_at=p.spawned_at, exit_status=p.exit_status, reason=p.reason, failures=p.failures,
        failed_starts=p.failed_starts, retry_at=p.retry_at, hold=p.hold.name,
        health=None if p.health is None else str(p.health), health_reason=p.health_reason,
        health_failures=p.health_failures, status_text=p.status_text, restarts=p.restarts,
        generation=p.generation, exits={str(k): v for k, v in p.exits.items()},
        notify_fd=None if notify is None else notify.fd, notify_name=None if notify is None else notify.name,
        streams=tuple(streams),
    )
