"""`procguard -c CONFIG [--check]`: run the daemon in the foreground, or validate a config."""

import asyncio
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from procguard.observe.alerts import AlertManager
from procguard.config.load import load_config
from procguard.config.model import Config, ConfigDiff
from procguard.control.server import ControlServer, ControlSetupError
from procguard.errors import ConfigError
from procguard.argv import parse_args
from procguard.observe.events import EventBus
from procguard.runtime.executor import IdleExitPool
from procguard.log import LogRing, configure_logging, get_logger, process_cpu_ms
from procguard.io.systemd import SystemdNotifier
from procguard.io.listeners import SocketError
from procguard.runtime.procfs import untracked_children
from procguard.runtime.realos import RealOS
from procguard.runtime.reaper import become_subreaper
from procguard.protocol import VERSION
from procguard.engine.process import Process
from procguard.engine.supervisor import Supervisor

if TYPE_CHECKING:
    from procguard.control.handlers import AfterReply
    from procguard.observe.metrics_server import MetricsServer
    from procguard.upgrade.state import Snapshot

log = get_logger()

# After every program stopped, orphans that no program claims get this long after SIGTERM before SIGKILL.
ORPHAN_GRACE_S = 5.0
SYSTEMD_FLUSH_S = 2.0  # at most this long at exit for sd_notify messages a busy systemd has not taken


class Daemon:
    """The event loop's owner: signals in, supervisor commands out.

    Read top to bottom: `setup` builds and wires every part and opens the endpoints, `run` starts the
    programs and then waits for signals (the handlers only queue them; `handle_<sig>` acts on each in
    the loop), `shutdown` stops everything in reverse.
    """

    alerts: AlertManager
    osapi: RealOS
    supervisor: Supervisor
    control: ControlServer
    metrics: "MetricsServer | None"

    def __init__(self, config: Config, events: EventBus | None = None, mainlog: LogRing | None = None,
                 argv: list[str] | None = None, adopted: "Snapshot | None" = None) -> None:
        self.config = config
        self.argv = argv if argv is not None else sys.argv[1:]  # what a re-exec runs again
        self.adopted = adopted  # the state a previous image handed over (upgrade/adopt.py)
        self.events = events if events is not None else EventBus()
        self.mainlog = mainlog
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        self._reaped = asyncio.Event()  # set by each reap of a child that led no process (an orphan)
        self.systemd: SystemdNotifier | None = None
        self._is_subreaper = False
        self._watchdog: asyncio.Task[None] | None = None
        self._starter: asyncio.Task[None] | None = None
        self._control_open = False  # only after a re-exec can the daemon run without it (_open_endpoints)

    async def run(self) -> int:
        if not await self.setup():
            return 1
        self.start()
        try:
            running = True
            while running:
                running = await self.handle(await self._signals.get())
        finally:
            await self.shutdown()
        log.info("daemon_stopped")
        return 0

    # --------------------------------------------------------------------------------- setup

    async def setup(self) -> bool:
        """Build and wire every part, then open the endpoints; False (logged) when one cannot be opened."""
        loop = asyncio.get_running_loop()
        loop.set_default_executor(IdleExitPool())  # to_thread workers leave when idle (executor.py)
        if self.mainlog is not None:
            self.mainlog.bind(loop)
        self.events.attach(loop)
        self.alerts = AlertManager(self.config.alerts, self.events)
        if self.adopted is not None:  # upgrade/ is loaded by a re-exec and the image it starts, never idle (#17)
            from procguard.upgrade import adopt
        # Read (and removed from our environment) before anything can start a child.
        self.systemd = SystemdNotifier.from_environ() if self.adopted is None else adopt.systemd_notifier(self.adopted)
        self._is_subreaper = become_subreaper()
        self.osapi = RealOS(loop, self.config.logdir, on_reaped=self._child_reaped, on_spawned=self._process_spawned)
        self.supervisor = Supervisor(self.config, self.osapi)
        self._adopt_processes()
        # The handlers only queue the signal; the main loop acts on it (never log in a handler).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        loop.add_signal_handler(signal.SIGCHLD, self.osapi.reap)
        # 1000 children exiting at once fill asyncio's wakeup socket, and Python then prints a traceback
        # per dropped byte onto stderr, into the middle of our log lines. A dropped byte loses nothing:
        # the bytes still queued wake the reaper, which collects every zombie (waitpid loop).
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)
        self.control = ControlServer(self.config, self.supervisor, self._reload_command,
                                     lambda: self._signals.put_nowait(signal.SIGTERM), self.osapi.output,
                                     self.events, self.alerts, self.mainlog,
                                     handoff=None if self.adopted is None else adopt.control_handoff(self.adopted),
                                     reexec=self._reexec)
        return await self._open_endpoints()

    async def _reexec(self) -> "AfterReply":
        from procguard.upgrade.handoff import Reexec  # a re-exec only: an idle daemon never loads upgrade/ (#17)

        return await Reexec(config=self.config, supervisor=self.supervisor, osapi=self.osapi,
                            systemd=lambda: self.systemd, argv=self.argv).request()

    def _adopt_processes(self) -> None:
        """After a re-exec: take over every process as the previous image left it, before anything reaps
        (a child that exited during the exec is then a known pid's)."""
        if self.adopted is not None:
            from procguard.upgrade import adopt

            adopt.adopt_processes(self.adopted, self.supervisor, self.osapi)

    def _child_reaped(self, pid: int) -> None:
        self.supervisor.child_reaped(pid)
        self._reaped.set()

    def _process_spawned(self, process: Process) -> None:
        self.supervisor.process_spawned(process)

    async def _open_endpoints(self) -> bool:
        """The control socket, the held sockets, the metrics endpoint; on a failure close what opened.

        After a re-exec the programs run already: an endpoint that fails is logged and the daemon serves
        on without it (still supervising, stopping everything on SIGTERM) rather than leave them alone.
        """
        try:
            self.control.open()
            self._control_open = True
        except (ControlSetupError, OSError) as exc:
            # Before any child exists: nothing to clean up, and the other daemon keeps its socket.
            log.error("control_setup_failed", endpoint=self.config.control, error=str(exc), **self._serving_on())
            if self.adopted is None:
                return False
        if self.adopted is not None:
            from procguard.upgrade import adopt

            adopt.adopt_sockets(self.adopted, self.osapi.sockets, self.config)
        try:
            self.osapi.sockets.apply(self.config.sockets, self.config.socket_users())
        except SocketError as exc:
            log.error("socket_bind_failed", error=str(exc), **self._serving_on())
            if self.adopted is None:
                await self.control.close()
                return False
        try:
            self.metrics = await self._start_metrics()
        except OSError as exc:
            assert self.config.metrics is not None
            log.error("metrics_setup_failed", address=self.config.metrics.address, error=str(exc),
                      **self._serving_on())
            if self.adopted is None:
                await self.control.close()
                self.osapi.sockets.close()
                return False
            self.metrics = None
        return True

    def _serving_on(self) -> dict[str, str]:
        return {} if self.adopted is None else {"action": "serving on without it: the programs were adopted"}

    async def _start_metrics(self) -> "MetricsServer | None":
        """Listen for Prometheus scrapes when configured (prometheus_client is imported only then); raises OSError."""
        if self.config.metrics is None:
            return None
        from procguard.observe.metrics_server import MetricsServer

        server = MetricsServer(self.config.metrics, self.supervisor, self.osapi.output, lambda: self.control.requests,
                               self.config.control_gid)
        await server.start()
        return server

    def start(self) -> None:
        """Serve the control socket, then start the autostart programs."""
        if self._control_open:
            self.control.start()
        log.info("daemon_started", version=VERSION, pid=os.getpid(), config=self.config.path,
                 programs=len(self.config.programs), subreaper=self._is_subreaper, control=self.config.control)
        for issue in self.config.warnings:
            log.warning("config_environment_problem", problem=str(issue))
        for issue in self.config.lints:
            log.warning("config_lint", problem=str(issue))
        self.osapi.reap()  # children inherited from before (PID 1 in a container) are reaped too
        if self.systemd is not None:
            self._watchdog = asyncio.create_task(self.systemd.watchdog())
            self.supervisor.changes.listen(self._status_reporter(self.supervisor, self.systemd))
        self._starter = asyncio.create_task(self._start_autostart() if self.adopted is None else self._adopted())

    async def _adopted(self) -> None:
        """After a re-exec: nothing to start (every process was adopted as it was); tell systemd we are back."""
        sup = self.supervisor
        log.info("daemon_ready", status=sup.counts(), adopted_from=self.adopted.version if self.adopted else None,
                 cpu_ms=process_cpu_ms())
        if self.systemd is not None:
            self.systemd.ready(sup.counts())

    @staticmethod
    def _status_reporter(sup: Supervisor, systemd: SystemdNotifier) -> Callable[[], None]:
        """A change callback sending systemd STATUS= counts once per loop turn (1000 changes at start-up)."""
        pending = False

        def send() -> None:
            nonlocal pending
            pending = False
            systemd.send(f"STATUS={sup.counts()}")

        def changed() -> None:
            nonlocal pending
            if not pending:
                pending = True
                asyncio.get_running_loop().call_soon(send)

        return changed

    async def _start_autostart(self) -> None:
        """Start the autostart programs; tell systemd we are ready once each is RUNNING, FATAL or blocked.

        A dependent waiting on a crash-looping dependency keeps start_autostart busy for as long as
        that lasts; readiness comes when every autostart process has settled, whichever is first.
        """
        sup = self.supervisor
        starting = asyncio.create_task(sup.start_autostart())
        try:
            while not starting.done():
                if sup.start_settled():
                    break
                changed = asyncio.create_task(sup.wait_change())
                await asyncio.wait({starting, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
            log.info("daemon_ready", status=sup.counts())
            if self.systemd is not None:
                self.systemd.ready(sup.counts())
            await starting
        finally:
            starting.cancel()

    # ------------------------------------------------------------------------------- signals

    async def handle(self, received: int) -> bool:
        """Act on one queued signal; False once the daemon is to stop."""
        if received in (signal.SIGTERM, signal.SIGINT):
            self.handle_term(received)
            return False
        if received == signal.SIGHUP:
            await self.handle_hup()
        elif received == signal.SIGUSR2:
            self.handle_usr2()
        return True

    @staticmethod
    def handle_term(received: int) -> None:
        log.info("shutdown_requested", signal=signal.Signals(received).name)

    async def handle_hup(self) -> None:
        """Reload the config; re-create the control socket if it was deleted (tmpfiles cleaning /run, an rm)."""
        try:
            self.control.restore()
        except (ControlSetupError, OSError) as exc:
            log.error("control_restore_failed", endpoint=self.control.endpoint, error=str(exc))
        try:
            await self._reload_command()
        except ConfigError:
            pass  # logged by reload; the old config keeps running

    def handle_usr2(self) -> None:
        self.osapi.output.reopen()  # after an external logrotate moved the files away

    async def _reload_command(self) -> ConfigDiff:
        """Apply the config file's difference (SIGHUP and `procguardctl reload`); raises ConfigError."""
        if self.systemd is not None:
            self.systemd.reloading()
        try:
            diff = await self.supervisor.reload()
        finally:
            if self.systemd is not None:
                self.systemd.ready(self.supervisor.counts())
        new = self.supervisor.config
        self.alerts.configure(new.alerts)
        if (new.control, new.control_group, new.curve) != (self.config.control, self.config.control_group,
                                                            self.config.curve):
            log.warning("control_change_needs_restart", endpoint=self.config.control, new_endpoint=new.control,
                        reason="the control socket keeps its settings until the daemon restarts")
        if new.metrics != self.config.metrics:
            log.warning("metrics_change_needs_restart", reason="the metrics endpoint keeps its address until the "
                        "daemon restarts")
        return diff

    # ------------------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """Stop every program (reverse priority), then every orphan, then close every endpoint."""
        if self.systemd is not None:
            self.systemd.stopping()
        # status still answers while programs stop; start, restart and reload are refused.
        self.control.stopping = True
        if self._starter is not None:
            self._starter.cancel()
            try:
                await self._starter
            except asyncio.CancelledError:
                pass
        await self.supervisor.stop_all()
        await self._stop_orphans()
        # Every child is gone: read each pipe to its end so all they wrote is in their files.
        self.osapi.output.close()
        await self.control.close()
        if self.metrics is not None:
            await self.metrics.close()
        self.osapi.sockets.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self.osapi.tasks):
            task.cancel()
        self.alerts.close()
        if self.systemd is not None:
            self.systemd.flush(SYSTEMD_FLUSH_S)  # STOPPING=1, if systemd has not taken it yet

    async def _stop_orphans(self) -> None:
        """Stop descendants no program owns (they double-forked out of every group): TERM, then KILL."""
        osapi = self.osapi
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ORPHAN_GRACE_S
        while True:
            osapi.reap()
            left = await asyncio.to_thread(untracked_children, osapi.tracked_pids())
            if not left:
                return
            sig = signal.SIGTERM if loop.time() < deadline else signal.SIGKILL
            log.info("orphans_signalled", pids=left, signal=sig.name)
            self._reaped.clear()
            for pid in left:
                osapi.send_signal(pid, sig, group=False)
            # Woken by the reaper (SIGCHLD), or after a short interval to escalate.
            try:
                async with asyncio.timeout(0.5 if sig != signal.SIGKILL else 1.0):
                    await self._reaped.wait()
            except TimeoutError:
                pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resumed = None
    if args.adopt_state_fd is not None:
        from procguard.upgrade.resume import Resumed

        resumed = Resumed(args.adopt_state_fd, args.config)
    try:
        config = load_config(args.config) if resumed is None else resumed.config()
    except ConfigError as exc:
        print(f"procguard: refusing config {args.config}:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    if args.check:
        return check(config)
    events, mainlog = EventBus(), LogRing()
    configure_logging(args.log_level or config.loglevel, args.log_format, ring=mainlog, bus=events)
    adopted = None
    if resumed is not None:
        resumed.report()
        if resumed.snapshot is None:
            return 1
        adopted = resumed.snapshot
    raise_fd_limit()
    reset = reset_inherited_signals()
    if reset:
        log.info("inherited_signals_reset", signals=reset)
    return asyncio.run(Daemon(config, events, mainlog, sys.argv[1:] if argv is None else argv, adopted).run())


def check(config: Config) -> int:
    """`--check`: print the resolved programs and the config's warnings; 1 if this machine cannot run it."""
    from procguard.config.describe import describe  # --check only: never in a running daemon (#17)

    print(describe(config))
    if config.lints:
        print("\nwarnings (known traps; the config is accepted):", file=sys.stderr)
        for issue in config.lints:
            print(f"  {issue}", file=sys.stderr)
    if config.warnings:
        print("\nproblems on this machine:", file=sys.stderr)
        for issue in config.warnings:
            print(f"  {issue}", file=sys.stderr)
        return 1
    print("\nconfig OK")
    return 0


# Python itself ignores these at start-up; Popen(restore_signals=True) gives children the defaults.
_PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})


def reset_inherited_signals() -> list[str]:
    """Undo signal dispositions inherited from whoever started the daemon; the names changed.

    exec keeps an ignored signal ignored and a blocked one blocked, so every program would inherit
    them: `nohup` ignores HUP (a server's reload signal), a non-interactive shell's background job
    ignores INT and QUIT (uWSGI's and many apps' stop signal), and QUIT would then never stop them.
    systemd starts each service with every signal at its default and none blocked; so does this.
    """
    def name(sig: int) -> str:
        try:
            return signal.Signals(sig).name
        except ValueError:
            return f"signal {int(sig)}"  # a real-time signal without a name of its own

    changed = [f"{name(s)} (blocked)" for s in signal.pthread_sigmask(signal.SIG_SETMASK, ())]
    for sig in signal.valid_signals():
        if sig in _PYTHON_IGNORES or sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
                changed.append(f"{name(sig)} (ignored)")
        except (OSError, ValueError):
            continue  # one Python may not touch
    return changed


def raise_fd_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: each process holds 1-2 output pipes in the daemon.

    The default soft limit (1024) would stop a daemon with ~500 programs; systemd's LimitNOFILE sets the
    hard one. Children inherit the raised soft limit, as they do under systemd's LimitNOFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


if __name__ == "__main__":
    sys.exit(main())
