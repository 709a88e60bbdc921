"""Wire-level constants shared by the daemon and procguardctl (stdlib only, cheap to import)."""

VERSION = "0.1.0"
PROTOCOL_VERSION = 1

# Stable error codes carried in replies ({"ok": false, "error": {"code", "message"}}).
E_NO_SUCH_PROCESS = "no_such_process"
E_START_FAILED = "start_failed"
E_BAD_SIGNAL = "bad_signal"
E_BAD_CONFIG = "bad_config"
E_NOT_RUNNING = "not_running"
