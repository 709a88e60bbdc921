"""The config's files: the main file and the files its `include` globs name, each read once as TOML."""

import glob
import os
import tomllib
from pathlib import Path
from typing import Any

from procguard.config.templates import expand_here
from procguard.config.values import Bad
from procguard.errors import ConfigIssue

# The tables a file may hold, and what an unknown one is told.
_MAIN_TABLES = {"procguard", "program", "socket", "group", "alert"}
_INCLUDED_TABLES = {"program", "socket", "group", "alert"}


def read_toml(path: Path, issues: list[ConfigIssue]) -> dict[str, Any] | None:
    """The file's tables, or None with the reason in issues."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        issues.append(ConfigIssue(str(path), None, None, "no such file"))
    except PermissionError:
        issues.append(ConfigIssue(str(path), None, None, "permission denied"))
    except IsADirectoryError:
        issues.append(ConfigIssue(str(path), None, None, "is a directory, expected a TOML file"))
    except tomllib.TOMLDecodeError as exc:
        issues.append(ConfigIssue(str(path), None, None, f"invalid TOML: {exc}"))
    except UnicodeDecodeError as exc:
        issues.append(ConfigIssue(str(path), None, None, f"not UTF-8: {exc}"))
    return None


def check_main_tables(data: dict[str, Any], src: str, issues: list[ConfigIssue]) -> None:
    for key in sorted(set(data) - _MAIN_TABLES):
        issues.append(ConfigIssue(src, None, key, "unknown table (expected [procguard], [program.NAME], "
                                                  "[group.NAME], [socket.NAME] or [alert.NAME])"))


def read_includes(main: Path, section: dict[str, Any], environ: dict[str, str],
                  issues: list[ConfigIssue]) -> list[tuple[str, dict[str, Any]]]:
    """(path, tables) of each file the main file's `include` globs match, in order, each file once."""
    src, here = str(main), str(main.resolve().parent)
    includes = section.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(g, str) for g in includes):
        issues.append(ConfigIssue(src, None, "procguard.include", f"expected a list of globs, got {includes!r}"))
        includes = []
    files: list[tuple[str, dict[str, Any]]] = []
    seen_files = {str(main.resolve())}
    for pattern in includes:
        try:
            expanded = expand_here(pattern, here, environ)
        except Bad as exc:
            issues.append(ConfigIssue(src, None, "procguard.include", str(exc)))
            continue
        full = os.path.join(here, expanded)
        # Escape the directory: a config under "conf[1]/" must not turn into a character class.
        matches = sorted(glob.glob(os.path.join(glob.escape(here), expanded)))
        if not matches and not glob.has_magic(expanded):
            issues.append(ConfigIssue(src, None, "procguard.include", f"{pattern!r}: no such file {full}"))
        for match in matches:
            if str(Path(match).resolve()) in seen_files:
                continue
            seen_files.add(str(Path(match).resolve()))
            inc = read_toml(Path(match), issues)
            if inc is None:
                continue
            for key in sorted(set(inc) - _INCLUDED_TABLES):
                what = ("[procguard] belongs in the main file" if key == "procguard"
                        else "unknown table (expected [program.NAME], [group.NAME], [socket.NAME] or [alert.NAME])")
                issues.append(ConfigIssue(match, None, key, what))
            files.append((match, inc))
    return files

