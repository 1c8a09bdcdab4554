"""The one error type of reports and exports."""


class HistoryError(ValueError):
    """Bad input for a report or export (unknown subject, unreadable database, bad date or
    file name): a one-line message for the user, never a traceback."""
