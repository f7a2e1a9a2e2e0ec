"""The project's error types.

Each one is raised with a message that names the file, key, column or row at fault, what was
expected and how to fix it, so that the command line can print it as it is, without a traceback.
"""


class HmemError(Exception):
    """Base class: an error the user can fix from its message alone."""


class ConfigError(HmemError):
    """A configuration or search-space file, or a ``--set`` override, is invalid."""


class DataError(HmemError):
    """A data file is missing, malformed or too short for the requested windows."""


class LeakageError(HmemError):
    """The online loop asked for a row that the protocol has not revealed yet.

    This is a bug in the method being run, never a user error: it is raised so that a leaking
    variant fails loudly instead of producing an optimistic number.
    """


class NumericalError(HmemError):
    """A loss or forecast became NaN or infinite; the run stops instead of skipping the step."""
