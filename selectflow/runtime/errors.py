"""The one exception type for errors a user can cause and fix."""


class SelectFlowError(Exception):
    """Bad input, bad config, or a missing/corrupt file.

    The message names the file, record or key at fault and says what to do; the CLI
    prints it without a stack trace and exits with status 2.
    """


class CorruptFileError(SelectFlowError):
    """A result file that is truncated, half-written or of an unknown layout."""
