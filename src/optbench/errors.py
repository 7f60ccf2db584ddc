"""The errors optbench raises for a user to read. Each message is one paragraph naming the
bad value or the failing resource and the way out; cli.py maps each kind to an exit code
(2 bad input, 74 a resource) and prints the message without a traceback."""


class ConfigError(ValueError):
    """Bad input: the message names the bad value and the valid choices."""


class ResourceError(OSError):
    """A fault of something optbench needs, not of its input (a full disk): the message
    names the resource and the way out."""


class ResultsError(ConfigError):
    """A results folder that cannot be used as asked; the message says why and what to do."""
