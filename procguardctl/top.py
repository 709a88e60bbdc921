"""`procguardctl top`: a live full-screen view of every process, with keys to act on the selected one.

Drawn with curses from the standard library: it is what htop uses (ncurses), it works over any ssh
session whose terminal has a terminfo entry, it needs no dependency on a $5 server, and it costs
nothing to `procguardctl`'s other commands (this module is imported only by `top`; a test checks that
importing procguardctl loads neither it nor curses). rich has no keyboard input of its own and
textual is a large framework for one screen.

On a dumb terminal (TERM=dumb or unset, or stdout/stdin not a TTY) it prints a plain table every
refresh instead, without cursor control.

Data: `status` with `usage` (one /proc pass in the daemon: CPU seconds, RSS and fds of each tree);
CPU% is the CPU seconds' increase between two refreshes. The latest events come from the daemon's
`events` command where it has one. Commands (restart, start, stop) run in a thread, so the screen
keeps refreshing while a stop waits for stopwaitsecs.
"""

import argparse
import base64
import locale
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from procguard.protocol import E_UNKNOWN_COMMAND
from procguardctl import render
from procguardctl.client import TimedOut, Unreachable, request
from procguardctl.endpoint import ClientSettings

if TYPE_CHECKING:
    import curses

HISTORY = 16  # samples in each sparkline
EVENTS = 8  # events fetched for the pane below the table
UNICODE_BARS = "▁▂▃▄▅▆▇█"
ASCII_BARS = "_.-~=+*#"
KEYS_HELP = "q quit  ↑/↓ select  r restart  s start  x stop  t tail/events"
KEYS_HELP_ASCII = "q quit  up/down select  r restart  s start  x stop  t tail/events"


@dataclass
class Proc:
    """One process as last seen, with its CPU% and RSS history."""

    st: dict[str, Any]
    cpu_percent: float | None = None
    cpu_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    rss_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    last_cpu: tuple[int, float, float] | None = None  # (pid, cpu seconds, monotonic time)


class Model:
    """What the daemon says, refreshed on demand; commands on a background thread."""

    def __init__(self, where: ClientSettings, names: list[str], timeout_s: float) -> None:
        self.where = where
        self.names = names
        self.timeout_s = timeout_s
        self.procs: dict[str, Proc] = {}
        self.order: list[str] = []
        self.events: list[str] = []
        self.events_note = ""
        self.tail: list[str] = []
        self.message = ""
        self.error = ""
        self.busy: set[str] = set()

    def _ask(self, cmd: str, args: dict[str, Any], timeout_s: float | None) -> Any:
        reply = request(self.where, cmd, args, timeout_s)
        if not reply.ok:
            raise CommandFailed(reply.code or "error", reply.message or "")
        return reply.result

    def refresh(self, tail_of: str | None = None) -> None:
        """Fetch status (and events or a tail); raises Unreachable and TimedOut."""
        args: dict[str, Any] = {"usage": True}
        if self.names:
            args["names"] = self.names
        try:
            result = self._ask("status", args, self.timeout_s)
        except CommandFailed as exc:
            self.error = exc.message
            return
        self.error = ""
        now = time.monotonic()
        seen = []
        for st in result:
            name = str(st["name"])
            seen.append(name)
            p = self.procs.setdefault(name, Proc(st))
            p.st = st
            pid, cpu_s = st.get("pid"), st.get("cpu_s")
            if pid and cpu_s is not None:
                if p.last_cpu is not None and p.last_cpu[0] == pid and now > p.last_cpu[2]:
                    p.cpu_percent = max(0.0, 100.0 * (cpu_s - p.last_cpu[1]) / (now - p.last_cpu[2]))
                    p.cpu_history.append(p.cpu_percent)
                p.last_cpu = (pid, cpu_s, now)
                if st.get("rss_bytes") is not None:
                    p.rss_history.append(float(st["rss_bytes"]))
            else:
                p.cpu_percent = None
                p.last_cpu = None
        self.order = seen
        for gone in set(self.procs) - set(seen):
            del self.procs[gone]
        if tail_of is not None:
            self._refresh_tail(tail_of)
        else:
            self._refresh_events()

    def _refresh_events(self) -> None:
        if self.events_note:
            return  # this daemon has no events command: do not ask every second
        args: dict[str, Any] = {"limit": EVENTS}
        try:
            result = self._ask("events", args, self.timeout_s)
        except CommandFailed as exc:
            if exc.code == E_UNKNOWN_COMMAND:
                self.events_note = "(this daemon has no events command: upgrade it to see events here)"
            else:
                self.events_note = f"(events: {exc.message})"
            return
        self.events = [render.event_line(e, short_time=True) for e in result.get("events", [])][-EVENTS:]

    def _refresh_tail(self, name: str) -> None:
        try:
            result = self._ask("tail", {"name": name, "stream": "stdout"}, self.timeout_s)
        except CommandFailed as exc:
            self.tail = [f"(tail {name}: {exc.message})"]
            return
        text = base64.b64decode(result.get("data") or "").decode(errors="replace")
        self.tail = text.splitlines()[-50:]

    def act(self, cmd: str, name: str) -> None:
        """Run restart/start/stop on one process in a thread; the outcome shows in the message line."""
        if name in self.busy:
            self.message = f"{name}: a command is still running"
            return
        self.busy.add(name)
        self.message = f"{cmd} {name} ..."

        def run() -> None:
            try:
                result = self._ask(cmd, {"names": [name]}, None)
                last = result[-1] if result else {}
                self.message = f"{cmd} {name}: {last.get('message', 'done')}"
            except CommandFailed as exc:
                self.message = f"{cmd} {name}: {exc.message}"
            except (Unreachable, TimedOut) as exc:
                self.message = f"{cmd} {name}: {exc}"
            finally:
                self.busy.discard(name)

        threading.Thread(target=run, name=f"top-{cmd}", daemon=True).start()

    def name_width(self) -> int:
        return max(8, min(40, max((len(n) for n in self.order), default=0)))

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for name in self.order:
            state = str(self.procs[name].st.get("state", "?")).lower()
            counts[state] = counts.get(state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no processes"


class CommandFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------------------------ formatting


def human_bytes(n: float | None) -> str:
    return render.human_bytes(n, ("B", "K", "M", "G"))


def uptime(st: dict[str, Any]) -> str:
    return "-" if st.get("uptime_s") is None else render.uptime(int(st["uptime_s"]))


def sparkline(values: "deque[float]", bars: str, floor: float = 0.0, relative: bool = False) -> str:
    """One character per value; relative: scaled between the lowest and highest value shown."""
    if not values:
        return ""
    lo = min(values) if relative else 0.0
    hi = max(max(values), floor)
    span = hi - lo
    top = len(bars) - 1
    return "".join(bars[0 if span <= 0 else min(top, int((v - lo) / span * top + 0.5))] for v in values)


COLUMNS = (("NAME", 0), ("STATE", 9), ("HEALTH", 9), ("PID", 7), ("UPTIME", 9), ("CPU%", 6), ("RSS", 8),
           ("RESTARTS", 8))


def row_cells(p: Proc) -> list[str]:
    st = p.st
    cpu = "-" if p.cpu_percent is None else f"{p.cpu_percent:.1f}"
    return [str(st.get("name")), str(st.get("state")), str(st.get("health") or "-"), str(st.get("pid") or "-"),
            uptime(st), cpu, human_bytes(st.get("rss_bytes")), str(st.get("restarts", 0))]


def table_line(cells: list[str], name_width: int) -> str:
    """One row: NAME as wide as the longest name (name_width), the other columns fixed."""
    out = []
    for (title, width), cell in zip(COLUMNS, cells):
        width = width or name_width
        right = title in ("PID", "CPU%", "RSS", "RESTARTS")
        cell = cell if len(cell) <= width else cell[: width - 1] + "~"
        out.append(cell.rjust(width) if right else cell.ljust(width))
    return " ".join(out)


def histories(p: Proc, bars: str) -> str:
    cpu = sparkline(p.cpu_history, bars, floor=1.0).ljust(HISTORY)
    rss = sparkline(p.rss_history, bars, relative=True).ljust(HISTORY)
    return f"{cpu} {rss}"


def header_line(name_width: int) -> str:
    return table_line([t for t, _ in COLUMNS], name_width) + " " + "CPU history".ljust(HISTORY) + " " + "RSS history"


# ----------------------------------------------------------------------------------------- plain


def is_dumb_terminal() -> bool:
    return os.environ.get("TERM", "dumb") in ("", "dumb") or not (sys.stdout.isatty() and sys.stdin.isatty())


def run_plain(model: Model, interval_s: float, iterations: int | None) -> int:
    """A plain refreshing table: one block per refresh, no cursor control (dumb terminals, pipes)."""
    done = 0
    while True:
        print(f"procguard top  {model.where.endpoint}  {model.summary()}  "
              f"{datetime.now().strftime('%H:%M:%S')}")
        if model.error:
            print(f"error: {model.error}")
        print(header_line(model.name_width()))
        for name in model.order:
            p = model.procs[name]
            print((table_line(row_cells(p), model.name_width()) + " " + histories(p, ASCII_BARS)).rstrip())
        print("latest events:")
        for line in model.events or [model.events_note or "(none)"]:
            print(f"  {line}")
        print(flush=True)
        done += 1
        if iterations is not None and done >= iterations:
            return 0
        time.sleep(interval_s)
        model.refresh()


# ---------------------------------------------------------------------------------------- curses


class Screen:
    """The full-screen view: table, events or tail pane, key help; redrawn after each refresh or key."""

    def __init__(self, stdscr: "curses.window", model: Model, interval_s: float, unicode: bool) -> None:
        import curses

        self.curses = curses
        self.scr = stdscr
        self.model = model
        self.interval_s = interval_s
        self.bars = UNICODE_BARS if unicode else ASCII_BARS
        self.help = KEYS_HELP if unicode else KEYS_HELP_ASCII
        self.selected = 0
        self.first = 0  # first table row shown (scrolling)
        self.tail_of: str | None = None
        self.colours: dict[str, int] = {}

    def setup(self) -> None:
        c = self.curses
        c.curs_set(0) if hasattr(c, "curs_set") else None
        self.scr.keypad(True)
        self.scr.timeout(100)
        if c.has_colors():
            c.start_color()
            c.use_default_colors()
            pairs = {}
            for i, (name, colour) in enumerate((("green", c.COLOR_GREEN), ("yellow", c.COLOR_YELLOW),
                                                ("red", c.COLOR_RED)), start=1):
                c.init_pair(i, colour, -1)
                pairs[name] = c.color_pair(i)
            self.colours = {state: pairs[name] for state, name in render.STATE_COLOURS.items()}

    def run(self) -> int:
        self.setup()
        self.draw()  # run() fetched the first data already
        next_refresh = time.monotonic() + self.interval_s
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                try:
                    self.model.refresh(self.tail_of)
                except (Unreachable, TimedOut) as exc:
                    self.model.error = str(exc)
                next_refresh = now + self.interval_s
                self.draw()
            key = self.scr.getch()
            if key == -1:
                continue
            if key in (ord("q"), ord("Q"), 27):
                return 0
            if self.on_key(key):
                next_refresh = 0.0  # fetch at once (tail pane switched)
            self.draw()

    def selected_name(self) -> str | None:
        order = self.model.order
        if not order:
            return None
        self.selected = max(0, min(self.selected, len(order) - 1))
        return order[self.selected]

    def on_key(self, key: int) -> bool:
        """Handle one key; True when the data should be fetched again at once."""
        c = self.curses
        name = self.selected_name()
        if key in (c.KEY_UP, ord("k")):
            self.selected = max(0, self.selected - 1)
        elif key in (c.KEY_DOWN, ord("j")):
            self.selected += 1
        elif key == c.KEY_RESIZE:
            pass
        elif name is not None and key in (ord("r"), ord("s"), ord("x")):
            self.model.act({ord("r"): "restart", ord("s"): "start", ord("x"): "stop"}[key], name)
        elif key == ord("t"):
            self.tail_of = None if self.tail_of is not None else name
            return True
        return False

    def put(self, y: int, x: int, text: str, attr: int = 0) -> None:
        height, width = self.scr.getmaxyx()
        if y >= height or x >= width:
            return
        try:
            self.scr.addnstr(y, x, text, width - x - (1 if y == height - 1 else 0), attr)
        except self.curses.error:
            pass  # the bottom-right cell cannot be written without scrolling

    def draw(self) -> None:
        c, m = self.curses, self.model
        self.scr.erase()
        height, width = self.scr.getmaxyx()
        title = f"procguard top  {m.where.endpoint}  {m.summary()}"
        self.put(0, 0, title, c.A_BOLD)
        clock = datetime.now().strftime("%H:%M:%S")
        if len(title) + len(clock) + 2 <= width:
            self.put(0, width - len(clock) - 1, clock)
        status = m.error or m.message
        self.put(1, 0, status, c.A_BOLD if m.error else 0)
        name_width = m.name_width()
        self.put(2, 0, header_line(name_width).ljust(width), c.A_REVERSE)
        pane = max(3, min(EVENTS + 1, height // 3))
        rows = max(1, height - 4 - pane)
        self.selected_name()
        if self.selected < self.first:
            self.first = self.selected
        elif self.selected >= self.first + rows:
            self.first = self.selected - rows + 1
        for i, name in enumerate(m.order[self.first:self.first + rows]):
            p = m.procs[name]
            y = 3 + i
            line = table_line(row_cells(p), name_width)
            chosen = self.first + i == self.selected
            base = c.A_REVERSE if chosen else 0
            self.put(y, 0, line.ljust(width) if chosen else line, base)
            state = str(p.st.get("state"))
            state_x = name_width + 1
            self.put(y, state_x, state.ljust(COLUMNS[1][1]), base | self.colours.get(state, 0))
            self.put(y, len(line) + 1, histories(p, self.bars), base)
        y = 3 + rows
        title = f" output of {self.tail_of} (t: back to events) " if self.tail_of else " latest events "
        self.put(y, 0, ("─" if self.bars is UNICODE_BARS else "-") * 2 + title
                 + ("─" if self.bars is UNICODE_BARS else "-") * max(0, width - len(title) - 2))
        lines = m.tail if self.tail_of else (m.events or [m.events_note or "(none yet)"])
        for i, text in enumerate(lines[-(pane - 1):] if pane > 1 else []):
            self.put(y + 1 + i, 0, text)
        self.put(height - 1, 0, self.help, c.A_DIM)
        self.scr.refresh()


def run(where: ClientSettings, ns: argparse.Namespace) -> int:
    """procguardctl top: full screen on a capable terminal, else (or with --plain) a plain table.

    Raises Unreachable and TimedOut (the first refresh, or any in the plain table) for the caller to report.
    """
    model = Model(where, list(ns.names), timeout_s=10.0)
    model.refresh()  # fail fast, before the screen is taken over, when the daemon is not there
    if ns.plain or is_dumb_terminal():
        try:
            return run_plain(model, ns.delay, ns.iterations)
        except KeyboardInterrupt:
            return 0
    import curses

    locale.setlocale(locale.LC_ALL, "")  # curses draws UTF-8 only under a UTF-8 locale
    unicode = locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"
    try:
        return int(curses.wrapper(lambda scr: Screen(scr, model, ns.delay, unicode).run()))
    except KeyboardInterrupt:
        return 0  # curses.wrapper restored the terminal
