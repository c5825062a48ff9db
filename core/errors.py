"""User-facing errors.

Every message says what was received, what was expected and how to fix it, so that the CLI can print
it on one line and the pages can show it with ``st.error`` without a traceback.
"""


class StudioError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(StudioError, ValueError):
    """A run configuration value is invalid."""


class DataError(StudioError):
    """A data source cannot be resolved or holds no usable images."""


class BackboneError(StudioError):
    """A backbone cannot be built (unknown name, input too small, weights unavailable)."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights cannot be had (typically: no network and nothing cached)."""


class RunNotFoundError(StudioError, KeyError):
    """No run with that id is in the store."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "run not found"
