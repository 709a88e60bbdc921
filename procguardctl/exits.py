"""procguardctl's exit statuses: supervisorctl's where it has one, so scripts that test them keep working.

supervisorctl (supervisor 4.3) takes them from LSB: LSBInitExitStatuses for actions, LSBStatusExitStatuses
for `status`.
"""

OK = 0
ERROR = 1  # LSB init: generic or unspecified error
USAGE = 2  # LSB init: invalid or excess arguments
NOT_ALL_RUNNING = 3  # LSB status: `status` shows a process that is not RUNNING
UNKNOWN = 4  # LSB status: `status` names an unknown process; also whenever the daemon is not reachable
NOT_RUNNING = 7  # LSB init: a process not running (signal, pid), or a start that failed
INTERRUPTED = 130  # what a shell reports for a command ended by ^C: 128 + SIGINT
# What a shell reports for cat, grep, ls killed in `... | head -1`: 128 + SIGPIPE, 13 on every Linux
# architecture (signal(7)); not read from the signal module, whose enums cost 4 M instructions of each start.
BROKEN_PIPE = 141
