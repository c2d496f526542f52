"""Errors raised while reading a LeRobot checkpoint or its tokenizer.

Both are :class:`~reflex_ros.engine.types.ReflexError` s (the CLI reports those as user
errors) and ``ValueError`` s (callers validating input with ``except ValueError`` keep
working). Every message names the offending key, file or hub id and, where there is one,
the command that fixes it.
"""

from __future__ import annotations

from reflex_ros.engine.types import ReflexError


class CheckpointError(ReflexError, ValueError):
    """The checkpoint is unsupported or inconsistent (unknown type, a missing weight or
    normalization statistic, a feature we do not implement such as relative actions)."""


class HubFileNotFoundError(ReflexError, FileNotFoundError):
    """A tokenizer or backbone repo is not in the local Hugging Face cache.

    Nothing is ever downloaded at run time, so the message carries the download command."""
