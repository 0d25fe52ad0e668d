"""The one exception type that reaches the user as a single line.

Everything the user can get wrong (a file, a field, a name, a value) raises ``StudyInputError`` with a
message that names the file, line, field and what was expected. The command line prints the message
alone (no traceback) and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StudyInputError(ValueError):
    """Bad input from the user: a one-line message that says what was expected."""


class DataError(StudyInputError):
    """A data file that is missing or malformed (message names file, line and field)."""


def one_of(kind: str, value: object, valid) -> StudyInputError:
    """``unknown <kind> 'value'; valid: a, b, c`` as an error to raise."""
    return StudyInputError(f"unknown {kind} {value!r}; valid: {', '.join(sorted(map(str, valid)))}")


class StudyFault(RuntimeError):
    """The environment failed under a running study (disk full, a store that became read-only or
    unreachable, a trial that failed for a reason other than a diverging loss): one line for the user,
    after the study's and the trial's MLflow runs were ended FAILED with the reason."""
