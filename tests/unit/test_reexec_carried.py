"""The pre-flight's parsed config, carried to the re-exec'd image, is used only while it still holds (#19).

Real files and a real memfd, as the daemon hands them over; the pre-flight's side is
`carried.load_recorded` + `carried.write`, the new image's `carried.read`.
"""

import io
import os
import pickle
from pathlib import Path

import pytest

from procguard.config.load import load_config
from procguard.upgrade import carried
from procguard.upgrade.carried import Mismatch


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "procguard.toml").write_text(
        f'[procguard]\nlogdir = "{tmp_path}/logs"\ninclude = ["conf.d/*.toml"]\n\n'
        '[program.web]\ncommand = ["sleep", "1000"]\n')
    (tmp_path / "conf.d" / "jobs.toml").write_text('[program.job]\ncommand = ["sleep", "{ENV_JOB_TIME}"]\n')
    return tmp_path


def carry(path: Path) -> tuple[bytes, object]:
    """What the pre-flight writes for the config at path, and the Config it loaded."""
    config, fingerprint = carried.load_recorded(lambda: load_config(path))
    out = io.BytesIO()
    carried.write(out, config, fingerprint)
    return out.getvalue(), config


def read(data: bytes, path: Path) -> tuple[object, Mismatch]:
    fd = os.memfd_create("test-carry")
    os.write(fd, data)  # the offset left at the end, as the pre-flight's writes leave the daemon's
    return carried.read(fd, str(path))


def test_the_carried_config_is_used_only_while_files_and_environment_are_as_the_preflight_saw(
        config_dir, monkeypatch):
    monkeypatch.setenv("JOB_TIME", "60")
    main = config_dir / "procguard.toml"
    data, config = carry(main)
    assert read(data, main) == (config, Mismatch.NONE)
    assert [p.name for p in config.programs] == ["job", "web"]

    # An include file edited (same size, new content): the files' config, not the carried one.
    jobs = config_dir / "conf.d" / "jobs.toml"
    jobs.write_text(jobs.read_text().replace("sleep", "slept"))
    assert read(data, main) == (config, Mismatch.FILES)  # (kept to fall back on)
    data, config = carry(main)
    assert read(data, main)[1] == Mismatch.NONE

    # A file added where an include glob looks.
    (config_dir / "conf.d" / "more.toml").write_text('[program.more]\ncommand = ["true"]\n')
    assert read(data, main)[1] == Mismatch.FILES
    data, config = carry(main)

    # Another main config file than the one the pre-flight loaded: not even to fall back on.
    assert read(data, config_dir / "conf.d" / "more.toml") == (None, Mismatch.FILES)

    # The environment {ENV_X} reads.
    monkeypatch.setenv("JOB_TIME", "61")
    assert read(data, main) == (config, Mismatch.ENVIRON)


def test_another_package_or_an_unreadable_carry_is_never_unpickled(config_dir, monkeypatch):
    monkeypatch.setenv("JOB_TIME", "60")
    main = config_dir / "procguard.toml"
    data, _ = carry(main)
    header_end = len(pickle.dumps(pickle.loads(data), protocol=pickle.HIGHEST_PROTOCOL))
    (version, files), *rest = pickle.loads(data)
    other = pickle.dumps(((version + ".post1", files), *rest), protocol=pickle.HIGHEST_PROTOCOL)
    # The Config after the header is replaced by bytes that would fail if unpickled: never reached.
    assert read(other + b"not a pickle", main) == (None, Mismatch.PACKAGE)
    assert read(data[:header_end] + b"not a pickle", main) == (None, Mismatch.UNREADABLE)
    assert read(b"", main) == (None, Mismatch.UNREADABLE)  # the pre-flight could not write one
