"""Alerts: `[alert.NAME]` turns events into messages to a webhook or a mailbox.

Each alert follows the event stream (procguard.observe.events) and keeps **episodes**: a FATAL process, an
unhealthy one, a crash loop, a failed deploy, dropped output. An episode sends one notice when it
begins, whatever repeats meanwhile, and (with `recovery`) one when it ends. Notices are batched:
the first starts a `batch_window`, and everything noticed within it goes out as one message
(superlance's crashmailbatch), so a database blip that takes twenty workers down is one message, not
twenty. A message that cannot be delivered is retried with backoff (1, 2, 4 ... 60 s), up to `retries`.

Delivery happens off the loop (procguard.observe.delivery): a receiver that hangs costs its own
alert's later messages, never the loop, other alerts or the stream (every event is in the ring before
any alert sees it). With nothing happening there is no timer and no polling: timers exist only while a
batch is open, a retry waits or a crash loop is being watched for its end.
"""

import asyncio
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from procguard.config.model import AlertConfig, AlertTrigger
from procguard.engine.states import Health, ProcessState
from procguard.errors import ControlError
from procguard.log import get_logger
from procguard.observe.delivery import DELIVER, DeliveryError, Message, Notice, Worker, allow_tls, needs_tls
from procguard.observe.events import Event, EventBus
from procguard.protocol import E_BAD_ARGS

log = get_logger()

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
MAX_OUTBOX = 100  # messages waiting for a dead receiver; older ones go first (the stream keeps the events)


def duration(seconds: float) -> str:
    """'45s', '3m05s', '2h10m': short and exact enough for a message."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _replace_name(fields: Mapping[str, Any]) -> str:
    """'deploy', or what else replaced the program by its next generation ('replace (restart)')."""
    trigger = fields.get("trigger")
    return "deploy" if trigger in (None, "deploy") else f"replace ({trigger})"


@dataclass(slots=True)
class _Watch:
    """What one alert remembers about one process."""

    exits: deque[float] = field(default_factory=deque)  # loop times of recent unexpected exits
    state: str = ""
    quiet_timer: asyncio.TimerHandle | None = None  # a crash loop ends after a window without exits


class AlertChannel:
    """One [alert.NAME]: its episodes, the open batch, the outbox and its sender."""

    def __init__(self, cfg: AlertConfig, host: str) -> None:
        self.cfg = cfg
        self._host = host
        self._open: dict[tuple[AlertTrigger, str], float] = {}  # (trigger, key) -> loop time it began
        self._watch: dict[str, _Watch] = {}
        self._batch: list[Notice] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._outbox: deque[Message] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._worker = Worker(cfg.name)

    # -------------------------------------------------------------------------------- events

    def covers(self, ev: Event) -> bool:
        return ev.program is not None and (not self.cfg.programs or ev.program in self.cfg.programs)

    def on_event(self, ev: Event) -> None:
        if not self.covers(ev):
            return
        f = ev.fields
        who = ev.process or ev.program or ""
        if ev.event == "process_state_changed":
            self._state_changed(ev, who, str(f.get("old")), str(f.get("new")))
        elif ev.event == "health_changed":
            if f.get("new") == Health.UNHEALTHY:
                self._begin(AlertTrigger.UNHEALTHY, who, ev, f"{who} is unhealthy: {f.get('reason')}")
            elif f.get("new") == Health.HEALTHY:
                self._end(AlertTrigger.UNHEALTHY, who, ev, f"{who} is healthy again")
        elif ev.event == "deploy_failed":
            self._begin(AlertTrigger.DEPLOY_FAILED, str(ev.program), ev,
                        f"{_replace_name(f)} of {ev.program} failed: {f.get('reason', 'see procguardctl events')}")
        elif ev.event == "deploy_succeeded":
            self._end(AlertTrigger.DEPLOY_FAILED, str(ev.program), ev, f"{_replace_name(f)} of {ev.program} succeeded")
        elif ev.event == "output_dropped":
            self._begin(AlertTrigger.OUTPUT_DROPPED, f"{who} {f.get('stream')}", ev,
                        f"{who} {f.get('stream')} output is being dropped ({f.get('cause')}: {f.get('path')})")
        elif ev.event == "output_recovered":
            self._end(AlertTrigger.OUTPUT_DROPPED, f"{who} {f.get('stream')}", ev,
                      f"{who} {f.get('stream')} output is written again ({f.get('dropped_bytes')} bytes lost)")

    def _state_changed(self, ev: Event, who: str, old: str, new: str) -> None:
        watch = self._watch.setdefault(who, _Watch())
        watch.state = new
        reason = ev.fields.get("reason") or ev.fields.get("exit") or ""
        # An unexpected exit, or a failed start (BACKOFF/FATAL not right after an EXITED already counted).
        crashed = (new == ProcessState.EXITED and ev.fields.get("expected") is False) or (
            new in (ProcessState.BACKOFF, ProcessState.FATAL) and old != ProcessState.EXITED)
        if crashed:
            self._crashed(ev, who, watch, reason)
        if new == ProcessState.FATAL:
            self._begin(AlertTrigger.FATAL, who, ev, f"{who} is FATAL: {reason}")
        elif new == ProcessState.RUNNING:
            self._end(AlertTrigger.FATAL, who, ev, f"{who} is RUNNING again")
            if (AlertTrigger.CRASH_LOOP, who) in self._open:
                self._watch_quiet(who, watch, ev)

    def _crashed(self, ev: Event, who: str, watch: _Watch, reason: object) -> None:
        now = asyncio.get_running_loop().time()
        if AlertTrigger.EXITED in self.cfg.events:
            self._notify(Notice(AlertTrigger.EXITED, False, ev.program, ev.process,
                                f"{who} exited unexpectedly: {reason}", ev.to_wire()))
        if watch.quiet_timer is not None:
            watch.quiet_timer.cancel()
            watch.quiet_timer = None
        window = self.cfg.crash_loop_window
        watch.exits.append(now)
        while watch.exits and watch.exits[0] < now - window:
            watch.exits.popleft()
        if len(watch.exits) >= self.cfg.crash_loop_exits:
            self._begin(AlertTrigger.CRASH_LOOP, who, ev,
                        f"{who} is crash-looping: {len(watch.exits)} exits in {duration(window)}; last: {reason}")

    def _watch_quiet(self, who: str, watch: _Watch, ev: Event) -> None:
        """A crash loop ends once the process has run a whole crash_loop_window without an exit."""
        if watch.quiet_timer is not None:
            watch.quiet_timer.cancel()

        def quiet() -> None:
            watch.quiet_timer = None
            if watch.state == ProcessState.RUNNING:
                watch.exits.clear()
                self._end(AlertTrigger.CRASH_LOOP, who, ev,
                          f"{who} has run {duration(self.cfg.crash_loop_window)} without exiting")

        watch.quiet_timer = asyncio.get_running_loop().call_later(self.cfg.crash_loop_window, quiet)

    def _begin(self, trigger: AlertTrigger, key: str, ev: Event, summary: str) -> None:
        if trigger not in self.cfg.events or (trigger, key) in self._open:
            return  # one notice per episode
        self._open[(trigger, key)] = asyncio.get_running_loop().time()
        self._notify(Notice(trigger, False, ev.program, ev.process, summary, ev.to_wire()))

    def _end(self, trigger: AlertTrigger, key: str, ev: Event, summary: str) -> None:
        began = self._open.pop((trigger, key), None)
        if began is None or not self.cfg.recovery:
            return
        lasted = duration(asyncio.get_running_loop().time() - began)
        self._notify(Notice(trigger, True, ev.program, ev.process, f"{summary} ({trigger} for {lasted})",
                            ev.to_wire()))

    # ------------------------------------------------------------------------- batching, sending

    def _notify(self, notice: Notice) -> None:
        self._batch.append(notice)
        if self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(self.cfg.batch_window, self._flush)

    def _flush(self) -> None:
        self._batch_timer = None
        notices, self._batch = self._batch, []
        if not notices:
            return
        if len(self._outbox) >= MAX_OUTBOX:
            lost = self._outbox.popleft()
            log.warning("alert_dropped", alert=self.cfg.name, notices=len(lost.notices),
                        reason=f"{MAX_OUTBOX} messages wait for the receiver; the oldest goes")
        self._outbox.append(Message(notices, self._host))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        while self._outbox:
            msg = self._outbox[0]
            delay = RETRY_FIRST_S
            while True:
                error = await self.deliver(msg)
                if error is None or msg.attempts > self.cfg.retries:
                    break
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
            if self._outbox and self._outbox[0] is msg:
                self._outbox.popleft()

    async def deliver(self, msg: Message) -> str | None:
        """One attempt on the worker thread, bounded by the timeout; log alert_sent or, for the last one,
        alert_failed. Returns the error, or None when delivered."""
        msg.attempts += 1
        deliver = DELIVER[self.cfg.type]
        cfg = self.cfg
        # The thread's own socket timeouts end a stalled read; this bounds a receiver that trickles.
        deadline = cfg.timeout * 2 + 1.0
        error: str | None = None
        try:
            async with asyncio.timeout(deadline):
                await self._worker.run(lambda: deliver(cfg, msg))
        except DeliveryError as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {deadline:g}s"
        except Exception as exc:  # task boundary: a bug in delivery is a failed attempt, not a dead sender
            log.exception("alert_delivery_error", alert=cfg.name)
            error = f"{type(exc).__name__}: {exc}"
        fields = {"alert": cfg.name, "kind": msg.kind, "notices": len(msg.notices), "attempts": msg.attempts}
        if error is None:
            log.info("alert_sent", **fields)
        elif msg.is_test or msg.attempts > cfg.retries:
            log.error("alert_failed", error=error, **fields)
        else:
            log.warning("alert_retrying", error=error, **fields)
        return error

    def close(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        for watch in self._watch.values():
            if watch.quiet_timer is not None:
                watch.quiet_timer.cancel()
        if self._sender is not None:
            self._sender.cancel()
        unsent = len(self._batch) + sum(len(m.notices) for m in self._outbox)
        if unsent:
            log.warning("alerts_unsent", alert=self.cfg.name, notices=unsent, reason="the daemon is stopping")


class AlertManager:
    """Every [alert.NAME] of the config, fed by the event bus; `test` for `procguardctl alert test`."""

    def __init__(self, alerts: tuple[AlertConfig, ...], bus: EventBus, host: str | None = None) -> None:
        self._host = host or socket.gethostname()
        self._channels: dict[str, AlertChannel] = {}
        self.configure(alerts)
        self._unsubscribe = bus.subscribe(self._on_event)

    def configure(self, alerts: tuple[AlertConfig, ...]) -> None:
        """Apply a (re)loaded config: unchanged alerts keep their episodes; changed ones start afresh."""
        if any(needs_tls(a) for a in alerts):
            allow_tls()
        wanted = {a.name: a for a in alerts}
        for name, channel in list(self._channels.items()):
            if wanted.get(name) != channel.cfg:
                channel.close()
                del self._channels[name]
        for name, cfg in wanted.items():
            if name not in self._channels:
                self._channels[name] = AlertChannel(cfg, self._host)

    def _on_event(self, ev: Event) -> None:
        for channel in self._channels.values():
            channel.on_event(ev)

    async def test(self, name: str) -> dict[str, Any]:
        """Send a test message through one alert now: one attempt, no batching, no retries."""
        channel = self._channels.get(name)
        if channel is None:
            known = ", ".join(self._channels) or "none configured"
            raise ControlError(E_BAD_ARGS, f"no such alert: {name} (alerts: {known})")
        msg = Message([], self._host, is_test=True)
        error = await channel.deliver(msg)
        return {"alert": name, "ok": error is None, "attempts": msg.attempts, "error": error}

    def close(self) -> None:
        self._unsubscribe()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
