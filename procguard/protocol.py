"""Wire-level constants shared by the daemon and procguardctl (stdlib only, cheap to import)."""

VERSION = "0.1.0"
PROTOCOL_VERSION = 1
