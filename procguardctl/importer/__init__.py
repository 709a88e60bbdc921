"""Convert a supervisord configuration into procguard TOML: `procguardctl import-supervisor`.

supervisord's INI is read the way supervisord 4 reads it: configparser with `;` and `#` comment lines and
inline comments (after whitespace), multi-line values, `[include] files=` globs relative to the main file,
`%(here)s` as the directory of the file a value came from, its other `%(name)s` expansions, and its
`environment=` lexer (commas inside quotes). What is converted is what supervisord ran.

Each `[program:x]`, `[fcgi-program:x]` and `[eventlistener:x]` becomes a `[program.NAME]` table in
`conf.d/NAME.toml` (the members of a `[group:x]` share `conf.d/GROUP.toml`); `[supervisord]`,
`[unix_http_server]` and `[inet_http_server]` become the main file's `[procguard]` table. Every key
without an equivalent is listed in the report, never dropped silently. Where procguard's default differs
from supervisord's, supervisord's behaviour is written out, with a comment on how to opt into procguard's.
No password is ever copied, into the TOML, the comments or the report.

Standard library and procguard.config.keys only (the keys and templates the daemon reads): procguardctl
must start fast and must not pull in the daemon (tests/unit/test_client_imports.py); this package is
imported only when the subcommand runs.
"""

from procguardctl.importer.cli import add_arguments, convert, main, run, write_output
from procguardctl.importer.report import ImportFailed

__all__ = ["ImportFailed", "add_arguments", "convert", "main", "run", "write_output"]
