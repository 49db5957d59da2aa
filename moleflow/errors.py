"""The one exception type users see: the CLI prints its message as a single `error:` line."""


class MoleflowError(Exception):
    """A problem with the user's input or environment, with an actionable message."""
