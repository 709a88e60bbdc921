"""The pre-flight's parsed config, carried to the next image across exec so that it need not parse again.

The pre-flight (preflight.py) runs the installed procguard in a child and loads the config as the next
image would: 1000 programs cost ~120 ms of TOML and validation, in the window where the control socket
does not answer. So it pickles the Config it built into a memfd the daemon keeps across the exec, with a
fingerprint of what that Config was built from:

- the installed package: VERSION and (path, size, mtime_ns) of every module file of procguard/, so the
  classes the pickle names are the classes the next image has (a `pip install` between pre-flight and
  exec changes them);
- every config file load_config opened (path, size, mtime_ns, sha256) and every directory an include
  glob listed (path, mtime_ns: a file added or removed changes it);
- the environment ({ENV_X} expansion reads it).

The next image checks the package first (only then is the Config unpickled: the header is builtins only)
and then the files and environment; a mismatch anywhere means it loads the config as usual. The files
are recorded with an audit hook (sys.addaudithook) in the pre-flight child, which exits right after,
so that every file the loader reads is covered without the loader keeping a list of its own.

Trust: the memfd is created by the daemon and written by its own child (same user, same code); nothing
else can reach it, which is what makes unpickling it acceptable.
"""

import hashlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO

import procguard
from procguard.config.model import Config
from procguard.protocol import VERSION

# Files the import machinery opens while load_config runs (a lazy import) are code, not config.
_CODE_SUFFIXES = (".py", ".pyc", ".so")
_MISSING = -1  # mtime_ns of a directory that was not there


class Mismatch(StrEnum):
    """Why a carried config was not used (the next image then loads the config itself)."""

    NONE = "none"
    UNREADABLE = "unreadable"  # empty (the pre-flight could not write it) or not what this module wrote
    PACKAGE = "package"  # another procguard is installed than the one the pre-flight ran
    FILES = "files"  # a config file, or a directory an include glob lists, changed since the pre-flight
    ENVIRON = "environ"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a Config was built from; builtins only, so that any version can unpickle it to compare."""

    package: tuple[str, tuple[tuple[str, int, int], ...]]  # VERSION, (relative path, size, mtime_ns)
    files: tuple[tuple[str, int, int, str], ...]  # (path, size, mtime_ns, sha256)
    dirs: tuple[tuple[str, int], ...]  # (path, mtime_ns or _MISSING)
    environ: str  # sha256 of the sorted environment

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.package, self.files, self.dirs, self.environ)


def package_fingerprint() -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """VERSION and (path, size, mtime_ns) of every module file of the procguard being run (~120 stats)."""
    root = os.path.dirname(os.path.abspath(procguard.__file__))
    out = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                st = os.stat(os.path.join(directory, name))
                out.append((os.path.relpath(os.path.join(directory, name), root), st.st_size, st.st_mtime_ns))
    return VERSION, tuple(out)


def environ_digest(environ: "os._Environ[str] | dict[str, str]") -> str:
    h = hashlib.sha256()
    for key, value in sorted(environ.items()):
        h.update(f"{key}\0{value}\0".encode(errors="surrogateescape"))
    return h.hexdigest()


def file_entry(path: str) -> tuple[str, int, int, str]:
    """(path, size, mtime_ns, sha256) of a file; size -1 when it cannot be read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return path, st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return path, _MISSING, 0, ""


def dir_entry(path: str) -> tuple[str, int]:
    try:
        return path, os.stat(path).st_mtime_ns
    except OSError:
        return path, _MISSING


@contextmanager
def recording() -> Iterator[tuple[set[str], set[str]]]:
    """Record (files opened, directories listed) until the block ends. The pre-flight child only: an
    audit hook cannot be removed, so it stays installed (and idle) until that short-lived process exits."""
    files: set[str] = set()
    dirs: set[str] = set()
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not active[0]:
            return
        if event == "open" and isinstance(args[0], str) and not args[0].endswith(_CODE_SUFFIXES):
            files.add(os.path.abspath(args[0]))
        elif event == "os.scandir" and isinstance(args[0], str):
            dirs.add(os.path.abspath(args[0]))

    sys.addaudithook(hook)
    try:
        yield files, dirs
    finally:
        active[0] = False


def load_recorded(load: Callable[[], Config]) -> tuple[Config, Fingerprint]:
    """Run load (load_config) and return its Config with the fingerprint of what it read."""
    with recording() as (files, dirs):
        config = load()
    return config, Fingerprint(package=package_fingerprint(),
                               files=tuple(file_entry(p) for p in sorted(files)),
                               dirs=tuple(dir_entry(p) for p in sorted(dirs)),
                               environ=environ_digest(os.environ))


def write(out: BinaryIO, config: Config, fingerprint: Fingerprint) -> None:
    """The header (the fingerprint, builtins only), then the Config, as two pickles one after the other."""
    pickle.dump(fingerprint.as_tuple(), out, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.dump(config, out, protocol=pickle.HIGHEST_PROTOCOL)


def read(fd: int, config_path: str) -> tuple[Config | None, Mismatch]:
    """The carried Config at fd (closed here), and whether it still holds (Mismatch.NONE) for this image.

    The Config is None when it cannot be trusted at all (another package, unreadable); with FILES or
    ENVIRON it is the pre-flight's (the config in force, validated by this code) for the caller to fall
    back on when the files as they are now are refused.
    """
    with open(fd, "rb") as f:
        f.seek(0)  # the pre-flight's writes moved the offset it shares with the daemon's descriptor
        try:
            package, files, dirs, environ = pickle.load(f)
        except Exception:  # an empty file (the pre-flight did not write one) or foreign bytes
            return None, Mismatch.UNREADABLE
        if package != package_fingerprint():
            return None, Mismatch.PACKAGE
        try:
            config = pickle.load(f)
        except Exception:
            return None, Mismatch.UNREADABLE
    if not isinstance(config, Config):
        return None, Mismatch.UNREADABLE
    if os.path.abspath(config.path) != os.path.abspath(config_path):
        return None, Mismatch.FILES  # another main file: not even to fall back on
    if tuple(file_entry(p) for p, *_ in files) != files or tuple(dir_entry(p) for p, _ in dirs) != dirs:
        return config, Mismatch.FILES
    if environ != environ_digest(os.environ):
        return config, Mismatch.ENVIRON
    return config, Mismatch.NONE
