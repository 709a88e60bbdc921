"""Every protocol command has a handler named as the command, and every handler is a protocol command (#15)."""

from procguard.control.handlers import Handlers, handler_names
from procguard.protocol import COMMANDS


def test_every_protocol_command_has_a_handler_and_every_handler_a_command() -> None:
    names = handler_names()
    assert sorted(set(COMMANDS) - names) == [], "commands without a handler"
    assert sorted(names - set(COMMANDS)) == [], "handlers without a protocol command"


def test_the_dispatch_table_maps_each_command_to_its_own_method() -> None:
    table = Handlers.__new__(Handlers).table()
    assert set(table) == set(COMMANDS)
    for name, handler in table.items():
        assert handler.__name__ == name  # type: ignore[attr-defined]
