"""The one family of exceptions embcache raises for problems a user can fix.

The CLI prints any :class:`EmbcacheError` as a single ``Error: ...`` line with exit code 1; anything
else is a bug and keeps its traceback.
"""


class EmbcacheError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class VectorsError(EmbcacheError):
    """The word-vectors file is missing, unreadable or malformed."""


class CorpusError(EmbcacheError):
    """The corpus is missing, empty, unreadable or does not match the options given."""


class StoreError(EmbcacheError):
    """The store is missing, incomplete, of another layout or not compatible with the request."""


class ModelError(EmbcacheError):
    """A model name, run folder or model card is wrong."""
