"""The errors optbench raises for a user to read. Each message is one paragraph naming the
bad value or the failing resource and the way out; cli.py maps each kind to an exit code
(2 bad input, 74 a resource) and prints the message without a traceback."""


class ConfigError(ValueError):
    """Bad input: the message names the bad value and the valid choices."""


class ResourceError(OSError):
    """A fault of something optbench needs, not of its input (a full disk): the message
    (strerror, also its str) names the resource and the way out."""

    def __str__(self) -> str:  # the paragraph alone, without OSError's "[Errno 28] "
        return self.strerror or super().__str__()


class ResultsError(ConfigError):
    """A results folder that cannot be used as asked; the message says why and what to do."""
