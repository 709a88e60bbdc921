"""Config keys of deploys (issue #16): restart_strategy and roll_batch, and what --check says."""

from pathlib import Path

import pytest

from procguard import daemon
from procguard.config.model import RestartStrategy
from tests.unit.test_config import HEADER, load_program, main_file, refused_key, write

SOCKET = '[socket.web]\nbind = "tcp://127.0.0.1:18000"\n'


def test_programs_on_held_sockets_overlap_by_default_and_others_recreate(tmp_path: Path) -> None:
    held = load_program(tmp_path, 'command = "gunicorn app"\nsockets = ["web"]\n' + "\n" + SOCKET)
    assert held.restart_strategy == RestartStrategy.OVERLAP and held.overlaps and held.roll_batch == 1
    plain = load_program(tmp_path, 'command = "celery worker"\n')
    assert not plain.overlaps
    chosen = load_program(tmp_path, 'command = "app"\nsockets = ["web"]\nrestart_strategy = "recreate"\n'
                                    'roll_batch = 2\nnumprocs = 4\nprocess_name = "w{process_num}"\n\n' + SOCKET)
    assert chosen.restart_strategy == RestartStrategy.RECREATE and not chosen.overlaps and chosen.roll_batch == 2


def test_bad_strategy_and_overlap_without_sockets_are_refused_by_key(tmp_path: Path) -> None:
    [line] = refused_key(tmp_path, 'command = "app"\nrestart_strategy = "blue-green"\n', "restart_strategy")
    assert '"overlap"' in line and "'blue-green'" in line
    [line] = refused_key(tmp_path, 'command = "app"\nrestart_strategy = "overlap"\n', "restart_strategy")
    assert "needs held sockets" in line
    [line] = refused_key(tmp_path, 'command = "app"\nroll_batch = 0\n', "roll_batch")


def test_check_says_which_way_each_program_is_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(main_file(tmp_path), HEADER + '[program.web]\ncommand = "/bin/true"\nsockets = ["web"]\n\n'
          '[program.worker]\ncommand = "/bin/true"\n\n' + SOCKET)
    assert daemon.main(["-c", str(main_file(tmp_path)), "--check"]) == 0
    out = capsys.readouterr().out
    web, worker = out.split("[program.worker]")
    assert "restart_strategy = overlap (the next generation starts beside this one" in web
    assert "restart_strategy = recreate (stop, then start)" in worker


def test_check_warns_of_files_two_generations_would_share(tmp_path: Path) -> None:
    from tests.unit.test_config import load

    config = load(tmp_path, HEADER + '[program.web]\ncommand = ["/bin/true", "--pidfile", "/run/web.pid"]\n'
                  'server = "uwsgi"\nsockets = ["web"]\n\n[program.gunicorn]\ncommand = ["gunicorn", "app"]\n'
                  'sockets = ["g"]\n\n[program.old]\ncommand = ["/bin/true", "--pidfile", "/run/old.pid"]\n'
                  'sockets = ["o"]\nrestart_strategy = "recreate"\n\n' + SOCKET
                  + '[socket.g]\nbind = "tcp://127.0.0.1:18001"\n[socket.o]\nbind = "tcp://127.0.0.1:18002"\n')
    found = {(i.program, i.key): i.message for i in config.lints if i.key == "restart_strategy"}
    assert "--pidfile /run/web.pid" in found[("web", "restart_strategy")]
    assert "--no-control-socket" in found[("gunicorn", "restart_strategy")]
    assert ("old", "restart_strategy") not in found  # recreate: one generation at a time
