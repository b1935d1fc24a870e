"""The one exception type for errors a user can cause and fix, and the exit statuses that report them.

:data:`EXIT_USER_ERROR` is what the CLI and a Snakemake job exit with on a
:class:`SelectFlowError`; a job exits with :data:`EXIT_OOM` on an out-of-memory error (the
retry runs with a smaller size) and with :data:`EXIT_NOT_RETRIED` when a retry is skipped
because the first attempt failed for another reason.
"""

EXIT_USER_ERROR = 2
EXIT_OOM = 3
EXIT_NOT_RETRIED = 4


class SelectFlowError(Exception):
    """Bad input, bad config, or a missing/corrupt file.

    The message names the file, record or key at fault and says what to do; the CLI
    prints it without a stack trace and exits with status 2.
    """


class CorruptFileError(SelectFlowError):
    """A result file that is truncated, half-written or of an unknown layout."""
