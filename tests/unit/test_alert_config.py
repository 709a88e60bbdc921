"""`[alert.NAME]` tables: defaults from the dataclass, every error naming file, alert and key (issue #18 item 2)."""

import textwrap
from pathlib import Path

import pytest

from procguard.config.load import load_config
from procguard.config.model import AlertConfig, AlertTrigger, AlertType, SmtpSecurity
from procguard.errors import ConfigError

PROGRAMS = '[program.web]\ncommand = "/bin/true"\n[program.worker]\ncommand = "/bin/true"\n'


def load(tmp_path: Path, alerts: str, include: str | None = None) -> tuple[AlertConfig, ...]:
    main = tmp_path / "procguard.toml"
    header = '[procguard]\ninclude = ["conf.d/*.toml"]\n' if include is not None else ""
    main.write_text(header + PROGRAMS + textwrap.dedent(alerts))
    if include is not None:
        (tmp_path / "conf.d").mkdir()
        (tmp_path / "conf.d" / "alerts.toml").write_text(textwrap.dedent(include))
    return load_config(main, environ={"PATH": "/usr/bin:/bin"}).alerts


def refusal(tmp_path: Path, alerts: str) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, alerts)
    prefix = f"{tmp_path / 'procguard.toml'}: "
    lines = str(excinfo.value).splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix):] for line in lines]


def test_defaults_come_from_the_dataclass(tmp_path):
    [hook, mail] = load(tmp_path, '''
        [alert.hook]
        type = "webhook"
        url = "https://hooks.slack.com/services/T0/B0/x"
        [alert.mail]
        type = "email"
        to = "ops@example.com"
    ''')
    assert hook == AlertConfig(name="hook", source=hook.source, type=AlertType.WEBHOOK,
                               url="https://hooks.slack.com/services/T0/B0/x")
    assert hook.events == (AlertTrigger.FATAL, AlertTrigger.UNHEALTHY, AlertTrigger.CRASH_LOOP,
                           AlertTrigger.DEPLOY_FAILED, AlertTrigger.OUTPUT_DROPPED)
    assert hook.programs == () and hook.crash_loop_exits == 5 and hook.crash_loop_window == 300.0
    assert hook.batch_window == 10.0 and hook.retries == 5 and hook.recovery
    assert (mail.smtp_host, mail.smtp_port, mail.security, mail.to) == ("localhost", 25, SmtpSecurity.NONE,
                                                                       ("ops@example.com",))


def test_every_key_parses_and_alerts_may_live_in_includes(tmp_path):
    creds = tmp_path / "smtp.cred"
    creds.write_text("user:secret\n")
    creds.chmod(0o600)
    [mail] = load(tmp_path, "", include=f'''
        [alert.mail]
        type = "email"
        smtp = "smtp.example.com:587"
        security = "starttls"
        credentials_file = "{creds}"
        from = "procguard@example.com"
        to = ["a@example.com", "b@example.com"]
        subject_prefix = "[prod]"
        events = ["fatal", "exited", "fatal"]
        programs = ["web"]
        crash_loop_exits = 3
        crash_loop_window = "2m"
        batch_window = "0s"
        retries = 0
        timeout = "500ms"
        recovery = false
    ''')
    assert mail.source == str(tmp_path / "conf.d" / "alerts.toml")
    assert (mail.smtp_host, mail.smtp_port, mail.security) == ("smtp.example.com", 587, SmtpSecurity.STARTTLS)
    assert mail.credentials_file == str(creds) and mail.sender == "procguard@example.com"
    assert mail.to == ("a@example.com", "b@example.com") and mail.subject_prefix == "[prod]"
    assert mail.events == (AlertTrigger.FATAL, AlertTrigger.EXITED) and mail.programs == ("web",)
    assert (mail.crash_loop_exits, mail.crash_loop_window, mail.batch_window) == (3, 120.0, 0.0)
    assert (mail.retries, mail.timeout, mail.recovery) == (0, 0.5, False)


def test_errors_name_the_alert_and_the_key_all_in_one_pass(tmp_path):
    lines = refusal(tmp_path, '''
        [alert.hook]
        type = "webhook"
        url = "ftp://example.com/"
        to = ["ops@example.com"]
        events = ["fatal", "on_fire"]
        programs = ["wbe"]
        retries = -1
        batch_window = "soon"
        colour = "red"
        [alert.mail]
        type = "email"
        smtp = "mail.example.com:port"
        to = ["not an address"]
        security = "ssl"
        [alert.what]
        type = "pager"
    ''')
    assert lines == [
        "[alert.hook] colour: unknown key",
        "[alert.hook] to: does not apply to type = 'webhook'",
        "[alert.hook] events: unknown event 'on_fire' (expected some of fatal, unhealthy, crash_loop, "
        "deploy_failed, output_dropped, exited)",
        "[alert.hook] programs: no such program 'wbe' (did you mean 'web'?)",
        "[alert.hook] retries: expected an integer >= 0, got -1",
        '[alert.hook] batch_window: expected a duration like 10, "500ms", "10s" or "2m", got \'soon\'',
        "[alert.hook] url: expected \"https://host/path\" (or http://), got 'ftp://example.com/'",
        "[alert.mail] smtp: expected \"host\" or \"host:port\", got 'mail.example.com:port'",
        "[alert.mail] security: expected \"none\", \"starttls\" or \"tls\", got 'ssl'",
        "[alert.mail] to: expected a list of addresses like [\"ops@example.com\"], got ['not an address']",
        "[alert.what] type: expected \"webhook\" or \"email\", got 'pager'",
    ]


def test_credentials_come_only_from_a_private_file_and_never_go_out_unencrypted(tmp_path):
    creds = tmp_path / "smtp.cred"
    creds.write_text("user:secret\n")
    creds.chmod(0o644)
    lines = refusal(tmp_path, f'''
        [alert.loose]
        type = "email"
        smtp = "smtp.example.com:587"
        security = "starttls"
        credentials_file = "{creds}"
        to = ["ops@example.com"]
        [alert.missing]
        type = "email"
        security = "tls"
        credentials_file = "{tmp_path / 'nope'}"
        to = ["ops@example.com"]
    ''')
    assert lines == [
        f"[alert.loose] credentials_file: {creds} is readable by others (mode 0644); chmod 600 it",
        f"[alert.missing] credentials_file: {tmp_path / 'nope'}: No such file or directory",
    ]
    creds.chmod(0o600)
    lines = refusal(tmp_path, f'''
        [alert.plain]
        type = "email"
        smtp = "smtp.example.com:25"
        credentials_file = "{creds}"
        to = ["ops@example.com"]
    ''')
    assert lines == ['[alert.plain] credentials_file: credentials are never sent unencrypted: '
                     'set security = "starttls" or "tls"']
    # To a local MTA on loopback, plain SMTP with AUTH is allowed (the traffic never leaves the host).
    [local] = load(tmp_path, f'''
        [alert.local]
        type = "email"
        smtp = "127.0.0.1:25"
        credentials_file = "{creds}"
        to = ["ops@example.com"]
    ''')
    assert local.credentials_file == str(creds)


def test_an_alert_defined_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, '[alert.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n',
             include='[alert.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n')
    assert str(excinfo.value) == (f"{tmp_path / 'conf.d' / 'alerts.toml'}: [alert] hook: defined twice: "
                                  f"also in {tmp_path / 'procguard.toml'}")
