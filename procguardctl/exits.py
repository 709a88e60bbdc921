"""procguardctl's exit statuses: supervisorctl's where it has one, so scripts that test them keep working.

supervisorctl (supervisor 4.3) takes them from LSB: LSBInitExitStatuses for actions, LSBStatusExitStatuses
for `status`.
"""

import signal

OK = 0
ERROR = 1  # LSB init: generic or unspecified error
USAGE = 2  # LSB init: invalid or excess arguments
NOT_ALL_RUNNING = 3  # LSB status: `status` shows a process that is not RUNNING
UNKNOWN = 4  # LSB status: `status` names an unknown process; also whenever the daemon is not reachable
NOT_RUNNING = 7  # LSB init: a process not running (signal, pid), or a start that failed
INTERRUPTED = 130  # what a shell reports for a command ended by ^C: 128 + SIGINT
BROKEN_PIPE = 128 + signal.SIGPIPE  # as a shell reports cat, grep, ls killed in `... | head -1`
