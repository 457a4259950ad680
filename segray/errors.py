"""The exceptions that mean "bad input": the CLI prints them as one line, without a traceback."""

from __future__ import annotations

from segray.cluster import ResourceError
from segray.config import ConfigError
from segray.data.folder import DatasetError
from segray.data.io import ImageError
from segray.engine import NonFiniteLossError
from segray.export import ExportError
from segray.models import PretrainedWeightsError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetError,
    ImageError,
    ExportError,
    PretrainedWeightsError,
    NonFiniteLossError,
    ResourceError,
    FileNotFoundError,
    FileExistsError,  # an output that already holds a run
)
