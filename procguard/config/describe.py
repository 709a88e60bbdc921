"""`procguard --check`: the resolved configuration, for people."""

import shlex
import signal
from collections.abc import Mapping

from procguard.config.healthchecks import default_healthcheck
from procguard.config.model import Config, HealthCheckType, ProgramConfig, RestartStrategy


def describe_healthcheck(prog: ProgramConfig, binds: Mapping[str, str]) -> str | None:
    """One line on the program's health check for `--check`, saying where a default one comes from."""
    hc = prog.healthcheck
    if hc is None and prog.server is not None:
        if default_healthcheck(prog.server, prog.processes[0].command, prog.sockets, binds) is not None:
            return f"none (healthcheck = false turns off the default of server = {prog.server})"
        return (f"none (server = {prog.server} has no default: it answers HTTP or the uwsgi protocol on no held "
                f"socket; write [program.{prog.name}.healthcheck])")
    if hc is None:
        return None
    line = f"{hc.type} {hc.target()}"
    if hc.type != HealthCheckType.EXEC:
        line += f", Host {hc.host or 'from the url'}, expect {hc.expected_status_text()}"
    line += f", every {hc.interval:g}s, unhealthy after {hc.retries}: {hc.on_unhealthy}"
    if hc.is_default:
        line += (f"  (the default of server = {prog.server}; write [program.{prog.name}.healthcheck] to change it, "
                 "healthcheck = false to turn it off)")
    return line


def describe(config: Config) -> str:
    """Render the resolved programs for `procguard --check`."""
    lines = [f"config: {config.path}", f"logdir: {config.logdir}", f"loglevel: {config.loglevel}",
             f"control: {config.control}" + (f" (group {config.control_group})" if config.control_group else "")]
    for group in config.groups:
        lines.append(f"[group.{group.name}]  ({group.source})")
        lines.append(f"  programs = {', '.join(group.programs)}")
        lines.append(f"  priority = {group.priority}")
    if config.metrics is not None:
        lines.append(f"metrics: {config.metrics.address}" + (" (public)" if config.metrics.public else ""))
    for prog in config.programs:
        lines.append(f"[program.{prog.name}]  ({prog.source})")
        attrs = {
            "user": prog.user, "uid": prog.uid, "gid": prog.gid, "umask": None if prog.umask is None else f"{prog.umask:03o}",
            "autostart": prog.autostart, "autorestart": prog.autorestart.value, "exitcodes": list(prog.exitcodes),
            "startsecs": prog.startsecs, "startretries": "forever" if prog.startretries is None else prog.startretries,
            "stopsignal": signal.Signals(prog.stopsignal).name, "stopwaitsecs": prog.stopwaitsecs,
            "stopasgroup": prog.stopasgroup, "killasgroup": prog.killasgroup, "priority": prog.priority,
            "backoff": f"{prog.backoff_initial}s .. {prog.backoff_max}s, reset after {prog.backoff_reset}s up",
            "server": prog.server, "ready": prog.ready.value,
            "reload_signal": None if prog.reload_signal is None else signal.Signals(prog.reload_signal).name,
            "sockets": list(prog.sockets) or None, "drain_timeout": prog.drain_timeout if prog.sockets else None,
            "restart_strategy": (f"{RestartStrategy.OVERLAP} (the next generation starts beside this one and takes "
                                 "over once ready)" if prog.overlaps else f"{RestartStrategy.RECREATE} (stop, then start)"),
            "depends_on": list(prog.depends_on) or None,
            "healthcheck": describe_healthcheck(prog, {sock.name: sock.bind for sock in config.sockets}),
        }
        lines.extend(f"  {k} = {v}" for k, v in attrs.items() if v is not None)
        if prog.group is not None:
            lines.append(f"  group = {prog.group}")
        for proc in prog.processes:
            lines.append(f"  process {proc.name}")
            lines.append(f"    command = {shlex.join(proc.command)}")
            if proc.directory:
                lines.append(f"    directory = {proc.directory}")
            lines.append(f"    stdout_logfile = {proc.stdout_logfile}")
            lines.append(f"    stderr_logfile = {proc.stderr_logfile if not prog.redirect_stderr else '(redirected to stdout)'}")
    return "\n".join(lines)
