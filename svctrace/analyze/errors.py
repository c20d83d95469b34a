"""The one error `svctrace analyze` reports: a single line, exit status 2."""


class AnalyzeError(Exception):
    """Something the user can fix (a path, a file, a flag); the message is the whole story."""
