"""The one base class of the errors a user can cause and fix.

Anything derived from :class:`FedqError` is a bad input (a setting, a file, a
corpus, a payload) whose message is one line for the user; the command-line
entry points print it and exit with status 2. Every other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations


class FedqError(ValueError):
    """A problem with the user's input; the message names the setting or file to fix."""


class ConfigError(FedqError):
    """A setting, or a combination of settings, that fedq cannot run."""
