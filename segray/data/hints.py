"""What a dataset says about itself: an optional ``dataset.yaml`` beside its images.

Like nnU-Net's ``dataset.json``, it tells the planner what the pixels cannot::

    # ROOT/dataset.yaml (ROOT holds images/ and masks/)
    orientation: free        # free: no natural up (cells, tissue, aerial); fixed: photographs
    channel_names: [red, green, blue]
    class_names: [background, nucleus]   # background first, one name a mask class

    hints = load_hints("data/cells")      # None: no dataset.yaml
    hints.orientation                     # "free"

Every key is optional; an unknown key or a wrong type is refused in one line naming the file.
A local folder or a URI (``s3://...``) alike: the file is read through `segray.storage`.
"""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segray.data.folder import DatasetError
from segray.storage import Location, read_text

__all__ = ["HINTS_FILE", "DatasetHints", "load_hints", "parse_hints"]

HINTS_FILE = "dataset.yaml"


class DatasetHints(BaseModel):
    """The keys of ``dataset.yaml``; None: not given (the planner decides from the data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    orientation: Literal["free", "fixed"] | None = Field(
        None,
        description="free: the images have no natural orientation (rotations and vertical flips "
        "train on views as likely as the originals); fixed: up stays up",
    )
    channel_names: list[str] | None = Field(
        None, description="one name per image channel, in order (recorded with the plan)"
    )
    class_names: list[str] | None = Field(
        None, description="one name per mask class, background first (data.classes)"
    )

    @field_validator("channel_names", "class_names")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v or any(not name.strip() for name in v):
            raise ValueError("needs one non-empty name per entry")
        if len(set(v)) != len(v):
            raise ValueError(f"names repeat: {v}")
        return v

    @field_validator("class_names")
    @classmethod
    def _two_classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(v) < 2:
            raise ValueError("needs at least 2 names (background first)")
        return v

    def to_dict(self) -> dict[str, object]:
        """The keys given, as in the file."""
        return self.model_dump(exclude_none=True)


def parse_hints(text: str, where: str = HINTS_FILE) -> DatasetHints:
    """The hints in ``text`` (YAML); ``where`` names the file in errors."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DatasetError(f"{where}: not valid YAML ({_one_line(e)})") from None
    if tree is None:
        return DatasetHints()
    if not isinstance(tree, dict):
        raise DatasetError(f"{where}: expected keys (orientation, ...), got {type(tree).__name__}")
    unknown = sorted(str(k) for k in tree if k not in DatasetHints.model_fields)
    if unknown:
        raise DatasetError(
            f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(DatasetHints.model_fields)}"
        )
    try:
        return DatasetHints.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise DatasetError(f"{where}: {key}: {err['msg']}") from None


def load_hints(root: str | None) -> DatasetHints | None:
    """The hints of the dataset in ``root`` (a folder or a URI); None where it has no
    ``dataset.yaml``."""
    if not root:
        return None
    loc = Location.parse(root).join(HINTS_FILE)
    try:
        text = read_text(loc)
    except UnicodeDecodeError:
        raise DatasetError(f"{loc.uri}: not UTF-8 text") from None
    return None if text is None else parse_hints(text, loc.uri)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
