"""How a check says no: the exceptions a check type raises, caught by the runner (check.py)."""


class CheckFailed(Exception):
    """The check ran and the service is not healthy; the message is the reason."""


class CheckAnswered(CheckFailed):
    """The service answered, and its answer fails the check (CheckResult.answered)."""
