"""supervisord's own view of a config, to compare a conversion with (issue #14).

supervisord 4's ServerOptions.realize parses the file exactly as `supervisord -c FILE` does (expansions from
the environment, its datatypes, its refusals); Subprocess.get_execv_args gives the argv it would exec.
"""

import dataclasses
import io
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class SupervisordView:
    """What supervisord's own parser (supervisor.options.ServerOptions) makes of a config."""

    processes: dict[str, Any]  # process name -> supervisor.options.ProcessConfig
    groups: dict[str, tuple[int, list[str]]]  # group name -> (priority, process names)

    def argv(self, name: str) -> list[str]:
        """The argv supervisord would exec: its own get_execv_args (expand, then shlex.split)."""
        from supervisor.process import Subprocess

        return list(Subprocess(self.processes[name]).get_execv_args()[1])


class SupervisordRefused(Exception):
    """supervisord's parser refused the config (it would exit 2); the message is what it printed."""


def supervisord_view(conf: Path, environ: dict[str, str] | None = None) -> SupervisordView:
    """Parse conf with supervisord 4's ServerOptions.realize, its environment being os.environ + environ.

    Raises SupervisordRefused where supervisord would refuse to start.
    """
    from unittest import mock

    from supervisor import datatypes, options as sv_options
    from supervisor.options import ServerOptions

    saved = dict(os.environ)
    os.environ.update(environ or {})
    # The corpus names log directories of the machines it came from (/var/log/shop): supervisord checks they
    # exist, which is about this machine, not about what the config means.
    with (mock.patch.object(datatypes, "existing_dirpath", lambda v: v),
          mock.patch.object(sv_options, "existing_dirpath", lambda v: v),
          mock.patch.object(sv_options, "existing_directory", lambda v: v)):
        try:
            options = ServerOptions()  # reads %(ENV_X)s from os.environ here
            options.stderr = io.StringIO()
            options.realize(args=["-c", str(conf)])
        except SystemExit:
            raise SupervisordRefused(options.stderr.getvalue()) from None
        finally:
            os.environ.clear()
            os.environ.update(saved)
    processes = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    groups = {g.name: (g.priority, [p.name for p in g.process_configs]) for g in options.process_group_configs}
    return SupervisordView(processes, groups)
