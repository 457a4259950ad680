"""What `segray auto` hands back, and the name of the file that marks a finished run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segray.auto.derive import Derived
from segray.auto.plan import Plan
from segray.config import Config

__all__ = ["SUMMARY", "AutoResult"]

SUMMARY = "auto_summary.json"  # written last: its presence marks a finished run


@dataclass
class AutoResult:
    output: str
    config: Config
    derived: Derived
    plan: Plan
    summary: dict[str, Any]
    # the dataset's `segray.data.Fingerprint` (listing included), when this process made it:
    # the search, the CV and the test take it instead of fingerprinting and listing again
    fingerprint: Any = None
