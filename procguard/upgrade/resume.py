"""The next image's start after a re-exec: the saved state, and the config to run (carried or loaded)."""

import time

from procguard.config.load import load_config
from procguard.config.model import Config
from procguard.errors import ConfigError
from procguard.log import get_logger, process_cpu_ms
from procguard.upgrade import carried
from procguard.upgrade.fds import read_state_fd
from procguard.upgrade.state import Snapshot, StateError, loads

log = get_logger()


def read_snapshot(fd: int) -> Snapshot:
    """The state the previous image left at fd; raises StateError."""
    return loads(read_state_fd(fd))


class Resumed:
    """What the next image starts from: the saved state, and the config (carried over, or loaded).

    Built before logging is configured (the config names the log level), so it keeps what happened and
    report() logs it once logging is up.
    """

    def __init__(self, state_fd: int, config_path: str) -> None:
        began, self._cpu = time.monotonic(), [process_cpu_ms()]  # interpreter and imports done
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self._path = config_path
        self._carried: Config | None = None
        self._mismatch = carried.Mismatch.UNREADABLE
        self._kept_issues: list[str] = []
        self._took_ms = 0.0
        try:
            self.snapshot = read_snapshot(state_fd)
        except (StateError, OSError) as exc:
            self.error = str(exc)
            return
        if self.snapshot.config_fd is not None:
            try:
                self._carried, self._mismatch = carried.read(self.snapshot.config_fd, config_path)
            except OSError:
                pass  # UNREADABLE: load it
        self._took_ms = round((time.monotonic() - began) * 1e3, 1)

    def config(self) -> Config:
        """The pre-flight's config if it still holds, else the files' (raises ConfigError when they are
        refused and there is nothing to fall back on).

        Files edited between the pre-flight and the exec that this version refuses would leave the apps
        without a supervisor: the pre-flight's config, which this code validated and which was in force,
        is kept instead, as a refused `reload` keeps it.
        """
        try:
            if self._carried is not None and self._mismatch == carried.Mismatch.NONE:
                return self._carried
            return load_config(self._path)
        except ConfigError as exc:
            if self._carried is None:
                raise
            self._kept_issues = [str(i) for i in exc.issues]
            return self._carried
        finally:
            self._cpu.append(process_cpu_ms())

    def report(self) -> None:
        cpu = {"started_cpu_ms": self._cpu[0], "cpu_ms": self._cpu[-1]}  # (the bench's split)
        if self.error is not None:
            log.error("reexec_adopt_failed", error=self.error)
        elif self._kept_issues:
            log.error("reexec_config_kept", reason="the config files changed since the pre-flight and are refused; "
                      "the config in force is kept", changed=str(self._mismatch), problems=self._kept_issues, **cpu)
        elif self._mismatch == carried.Mismatch.NONE:
            log.info("reexec_config_carried", took_ms=self._took_ms, **cpu)
        else:
            log.info("reexec_config_loaded", reason=str(self._mismatch), **cpu)
