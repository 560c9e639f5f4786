"""edgekit's exceptions: one base, precise subclasses, messages that say what to do.

The CLI prints ``str(error)`` as one line and exits with ``exit_code``; the daemon
sends ``code`` as the typed error of the MQTT protocol.
"""


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_code = 1
    code = "internal"


class UsageError(EdgekitError):
    """The command line or a setting is wrong."""

    exit_code = 2
    code = "bad_request"


class ConfigError(UsageError):
    """A config file, profile or environment variable is invalid."""


class OutputError(EdgekitError):
    """An output path cannot be written."""


class ModelFormatError(EdgekitError):
    """A checkpoint or GGUF file is missing, truncated, corrupt or inconsistent."""

    exit_code = 3


class UnsupportedModel(ModelFormatError):
    """The model's architecture or a feature of it is not supported."""


class QuantizeError(EdgekitError):
    """llama.cpp's quantizer refused or failed."""


class HubError(EdgekitError):
    """The Hugging Face Hub (or its cache) could not give us the file."""

    exit_code = 4


class DoesNotFit(EdgekitError):
    """The model does not fit the box's memory with any allowed setting."""

    exit_code = 5


class EngineError(EdgekitError):
    """The inference engine failed (the worker crashed, or llama.cpp refused)."""

    code = "internal"


class BadRequest(EdgekitError):
    """A request is malformed or out of the allowed ranges."""

    exit_code = 2
    code = "bad_request"


class ContextOverflow(BadRequest):
    """The prompt does not fit the context window."""

    code = "context_overflow"


class TooLarge(BadRequest):
    """A request's payload is larger than the daemon accepts."""

    code = "too_large"


class Busy(EdgekitError):
    """The request queue is full."""

    code = "busy"


class Expired(EdgekitError):
    """The request's deadline passed before it could run."""

    code = "expired"


class TimedOut(EdgekitError):
    """A request ran past limits.max_request_s and was stopped to free the engine."""

    code = "timeout"


class Duplicate(BadRequest):
    """A request repeated an id its requester already used (answered, or still running)."""

    code = "duplicate"


class Cancelled(EdgekitError):
    """The request was cancelled before or while it ran."""

    code = "cancelled"


class ProtocolError(EdgekitError):
    """A daemon's message does not follow docs/protocol.md (a daemon of another version?)."""


class BrokerError(EdgekitError):
    """The MQTT broker refused us or could not be reached."""

    exit_code = 6
