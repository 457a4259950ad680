"""`segray auto`: a dataset's fingerprint -> a derived config -> a budgeted search -> CV ->
the held-out test score -> bulk segmentation -> the report. One module per stage:
`derive` (fingerprint -> config), `plan` (probe -> epochs, trials, folds), `run` (configure),
`stages` (search, CV, test, segment, report), `progress` (checks and the state a resume reads)."""

from segray.auto.derive import AutoOptions, Derived, Resources, derive_config
from segray.auto.plan import Plan, make_plan, probe_step
from segray.auto.result import AutoResult
from segray.auto.run import parse_duration, prepare_auto, run_auto

__all__ = [
    "AutoOptions",
    "AutoResult",
    "Derived",
    "Plan",
    "Resources",
    "derive_config",
    "make_plan",
    "parse_duration",
    "prepare_auto",
    "probe_step",
    "run_auto",
]
