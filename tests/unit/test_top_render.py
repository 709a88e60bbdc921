"""procguardctl top's sparklines and table rows (the screen itself is tested in tmux: tests/integration/test_top.py)."""

from collections import deque

from procguardctl.top import ASCII_BARS, UNICODE_BARS, Proc, row_cells, sparkline, table_line


def test_cpu_sparkline_scales_to_the_highest_value_shown_with_a_floor() -> None:
    assert sparkline(deque([0.0, 50.0, 100.0]), UNICODE_BARS, floor=1.0) == "▁▅█"
    assert sparkline(deque([0.0, 0.1]), UNICODE_BARS, floor=1.0) == "▁▂"  # idle stays low, not full height
    assert sparkline(deque(), UNICODE_BARS) == ""


def test_rss_sparkline_is_relative_and_flat_when_nothing_changes() -> None:
    assert sparkline(deque([100.0, 150.0, 200.0]), ASCII_BARS, relative=True) == "_=#"
    assert sparkline(deque([5e6, 5e6]), ASCII_BARS, relative=True) == "__"


def test_a_row_shows_what_status_says() -> None:
    p = Proc({"name": "worker:worker_00", "state": "RUNNING", "health": "healthy", "pid": 4312, "uptime_s": 3725,
              "rss_bytes": 45 * 2**20, "restarts": 3}, cpu_percent=12.25)
    assert table_line(row_cells(p), 16).split() == ["worker:worker_00", "RUNNING", "healthy", "4312", "1:02:05",
                                                    "12.2", "45.0M", "3"]
    assert table_line(row_cells(p), 8).split()[0] == "worker:~"
