"""The one exception type of the codecs, kept apart so that every module can raise it."""

from fedq.errors import FedqError


class CodecError(FedqError):
    """A codec was asked for something it cannot do, or a payload is malformed."""
