"""The one exception type of the project's own user-facing errors."""


class DepthAttnError(ValueError):
    """A problem the user can fix: a bad value, option, file or folder, a refused combination,
    a run directory in use. The message names the value and what is allowed. The command line
    prints it as one line (exit status 2); any other exception keeps its traceback.

    A ``ValueError``, so that callers catching bad input the usual way catch it too."""
