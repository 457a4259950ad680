"""The exceptions that mean "bad input": the CLI prints them as one line, without a traceback.

``UserError`` is the base of the project's bad-input exceptions (a bad config, dataset, image,
export, checkpoint weights, a loss gone non-finite, resources the cluster lacks). It imports
nothing, so the CLI catches it without loading torch or Ray.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file or setting and the problem, in one line."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    FileExistsError,  # an output that already holds a run
)
