"""Errors that reach the user as one readable line, never as a traceback."""


class ConfigError(ValueError):
    """Bad user input: names the offending field and how to fix it.

    Raised before any training starts; ``launch.py`` prints it and exits with 2.
    """

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{field}: {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class DatasetNotFoundError(ConfigError):
    """A dataset's files are not on disk and could not be downloaded."""
