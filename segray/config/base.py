"""What every config section shares: the error type, the base class and optional fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from segray.errors import UserError

__all__ = ["ConfigError", "Section", "optional"]


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names key, value and what is allowed."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def optional(**kwargs: Any) -> Any:
    """A field unset (None) by default: ``Field(None, ...)`` with its bounds and description."""
    return Field(None, **kwargs)
