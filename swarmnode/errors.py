"""Errors that reach a user as one clear line (never a traceback)."""


class UserError(Exception):
    """Bad input or a refused operation: the message says what was wrong and what to do."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
