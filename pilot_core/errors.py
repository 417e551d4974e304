"""One exception type for every problem the user can fix: the CLI prints it as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or config. The message names the problem (file, line, key, value) and what is allowed."""

    exit_code = 2


class JobFailed(Exception):
    """The job ran and reached a negative outcome (e.g. the release gate said no): exit code 1."""

    exit_code = 1
