"""Errors the user can act on. Each message is one line that says what to do."""


class SamplescopeError(Exception):
    """Base class: bad input or an unavailable resource, reported as one line."""


class ConfigError(SamplescopeError, ValueError):
    """A parameter is missing, of the wrong type or out of range."""


class UnknownNameError(SamplescopeError, KeyError):
    """A model, reward, sampler or task name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelLoadError(SamplescopeError):
    """A model could not be loaded (missing file, unreachable hub, bad format)."""


class BudgetExhausted(SamplescopeError):
    """A sampler asked for work past its budget; raised by the run tracker."""


class Cancelled(SamplescopeError):
    """The user cancelled the run; raised by the run tracker between steps."""


class EngineError(SamplescopeError):
    """A served model (an inference server) failed: unreachable, refused the request, or died.

    A sampler run that meets one mid-way ends with status ``error``, keeping its events."""
