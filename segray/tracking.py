"""MLflow experiment tracking: the one module that imports mlflow (lazily: it is the optional
``segray[mlflow]`` extra).

Tracking is on when a tracking URI is set: ``tracking.mlflow_uri`` in the config, else the
standard ``MLFLOW_TRACKING_URI`` environment variable. Who talks to the server:

* ``segray train``: its driver opens the run (params: the resolved config, flattened), rank 0
  of the Ray Train workers logs every epoch's metrics (step = epoch), and the driver logs the
  artefacts and closes the run. Other ranks never talk to the server.
* ``segray tune``: its driver opens a parent run (the search space, at the end the summary);
  each trial's driver opens a nested run (params: exactly the sampled values) that its rank 0
  logs to in the same way.

A run is found again rather than opened twice: the run id of a train or search output is kept
in ``OUTPUT/tracking.json``, and a trial's run carries the tag ``segray.trial_id`` under its
parent, so a retried trial and a resumed search reattach to their runs. A retried epoch is not
logged twice.

A tracking server that cannot be reached is a `TrackingWarning` naming its URI (its user-info
dropped, as in every param, warning and ``tracking.json``: `segray.secrets`), never a failed
run: every call is wrapped, and after the first failure the tracker falls silent. The MLflow
client's retries and timeout are kept short (``MLFLOW_HTTP_REQUEST_*``, unless already set) so
that an unreachable server costs seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from segray.secrets import redact_uri, scrub_text

__all__ = [
    "CLIENT_ENV",
    "ENV_URI",
    "RUN_FILE",
    "TRIAL_TAG",
    "TrackingSettings",
    "Tracker",
    "TrackingWarning",
    "flatten_params",
    "metric_values",
    "save_run_id",
    "saved_run_id",
    "settings_from_config",
]

ENV_URI = "MLFLOW_TRACKING_URI"
RUN_FILE = "tracking.json"  # OUTPUT/tracking.json: the run a resumed train or search reattaches to
TRIAL_TAG = "segray.trial_id"
PARENT_TAG = "mlflow.parentRunId"
# Short client retries and timeout (seconds): the defaults (7 retries, 120 s) would hold an
# unreachable server's run for minutes. Set where not already set, here and on the workers.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
# MLflow prints a link to every run it closes, built from the tracking URI as given: with the
# URI's user-info (``https://user:token@host``) in it. Silenced for such a URI.
QUIET_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH = 100  # params / tags per log_batch call (MLflow's limit)

T = TypeVar("T")


class TrackingWarning(UserWarning):
    """The tracking server could not be reached or refused a call; the run goes on."""


@dataclass(frozen=True)
class TrackingSettings:
    """Where to track, picklable: it travels to trial drivers and Ray Train workers."""

    uri: str
    experiment: str = "segray"
    run_name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    experiment_id: str | None = None  # resolved by the first `Tracker.start`


def settings_from_config(cfg: Any) -> TrackingSettings | None:
    """The tracking settings of ``cfg.tracking`` (URI: the config's, else $MLFLOW_TRACKING_URI),
    or None when tracking is off. A URI without mlflow installed is a one-line error."""
    section = cfg.tracking
    uri = section.mlflow_uri or os.environ.get(ENV_URI) or None
    if not uri:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        from segray.config import ConfigError

        raise ConfigError(
            f"tracking to {redact_uri(uri)} needs mlflow: pip install 'segray[mlflow]' (or unset "
            f"tracking.mlflow_uri and ${ENV_URI})"
        ) from None
    return TrackingSettings(
        uri=uri,
        experiment=section.experiment,
        run_name=section.run_name,
        tags=tuple(sorted((str(k), str(v)) for k, v in section.tags.items())),
    )


# --------------------------------------------------------------------------- values
def _param_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, list, tuple, dict)) or value is None:
        text = json.dumps(value)
    else:
        text = str(value)
    text = scrub_text(text)  # a param is shown to everyone who reads the experiment
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys (``optim.lr``), values as text (lists and
    booleans as JSON: ``[1, 6, 12, 18]``, ``true``), cut to MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _param_text(value)
    return out


def metric_values(row: Mapping[str, Any], skip: Iterable[str] = ("epoch",)) -> dict[str, float]:
    """The numeric entries of a metrics row (booleans, text and ``skip`` left out)."""
    skipped = set(skip)
    return {
        k: float(v)
        for k, v in row.items()
        if k not in skipped and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


# --------------------------------------------------------------------------- tracker
class Tracker:
    """One MLflow run, or nothing: every method is a no-op while tracking is off, no run is
    open, or the server has failed once (that failure was a `TrackingWarning`)."""

    def __init__(self, settings: TrackingSettings | None, run_id: str | None = None) -> None:
        self.settings = settings
        self.run_id = run_id
        self._client: Any = None
        self._failed = settings is None
        if settings is not None:
            for key, value in CLIENT_ENV.items():
                os.environ.setdefault(key, value)
            if redact_uri(settings.uri) != settings.uri:
                os.environ[QUIET_URL_ENV] = "true"

    # -- state -------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether calls reach a run (tracking on, a run open, no failure so far)."""
        return not self._failed and self.run_id is not None

    @property
    def uri(self) -> str | None:
        return self.settings.uri if self.settings else None

    def worker_spec(self) -> dict[str, Any] | None:
        """What a Ray Train worker needs to log to this run (None: nothing to log)."""
        if not self.active or self.settings is None:
            return None
        return {"settings": asdict(self.settings), "run_id": self.run_id}

    @classmethod
    def attach(cls, spec: Mapping[str, Any] | None) -> Tracker:
        """The tracker of a run opened elsewhere (`worker_spec`); never creates a run."""
        if not spec:
            return cls(None)
        raw = dict(spec["settings"])
        raw["tags"] = tuple(tuple(t) for t in raw.get("tags", ()))
        return cls(TrackingSettings(**raw), run_id=spec["run_id"])

    def _call(self, what: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None with one warning naming the URI when the server fails."""
        if self._failed:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any client/network error: warn, never fail
            self._failed = True
            reason = scrub_text(" ".join(str(e).split()))[:300]
            warnings.warn(
                f"MLflow tracking at {redact_uri(self.uri or '')} failed to {what} ({type(e).__name__}: "
                f"{reason}); training goes on without tracking",
                TrackingWarning,
                stacklevel=3,
            )
            return None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # -- runs --------------------------------------------------------------
    def start(
        self,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> str | None:
        """Open the run: reattach to ``run_id`` if it exists, else to the run under
        ``parent_run_id`` whose tags equal ``match``, else create one (``tracking.run_name``
        wins over ``run_name``). Returns the run id, None when tracking is off or failed."""
        if self.settings is None:
            return None
        result = self._call(
            "open a run", lambda: self._start(run_name, tags, parent_run_id, run_id, match)
        )
        self.run_id = result
        return result

    def _start(self, run_name, tags, parent_run_id, run_id, match) -> str:
        assert self.settings is not None
        client = self.client
        if self.settings.experiment_id is None:
            self.settings = replace(self.settings, experiment_id=self._experiment_id())
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except Exception:  # noqa: BLE001 - deleted, or another server: open a new one
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                return self._reopen(run.info.run_id)
        if match:
            found = self.find(match, parent_run_id=parent_run_id)
            if found is not None:
                return self._reopen(found)
        all_tags = {**dict(self.settings.tags), **dict(tags or {}), **dict(match or {})}
        if parent_run_id is not None:
            all_tags[PARENT_TAG] = parent_run_id
        run = client.create_run(
            self.settings.experiment_id,
            run_name=self.settings.run_name or run_name,
            tags=all_tags,
        )
        return run.info.run_id

    def _reopen(self, run_id: str) -> str:
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _experiment_id(self) -> str:
        client, name = self.client, self.settings.experiment  # type: ignore[union-attr]
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def find(self, match: Mapping[str, str], *, parent_run_id: str | None = None) -> str | None:
        """The id of the active run in this experiment with tags ``match`` (under the parent)."""
        assert self.settings is not None and self.settings.experiment_id is not None
        wanted = dict(match)
        if parent_run_id is not None:
            wanted[PARENT_TAG] = parent_run_id
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in wanted.items())
        runs = self.client.search_runs(
            [self.settings.experiment_id],
            filter_string=query,
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def children(self) -> dict[str, str]:
        """``{trial id: run id}`` of this (parent) run's nested trial runs."""
        if not self.active:
            return {}

        def search() -> dict[str, str]:
            assert self.settings is not None
            runs = self.client.search_runs(
                [self.settings.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'",
                max_results=10000,
            )
            return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}

        return self._call("list the trial runs", search) or {}

    def end(self, status: str = "FINISHED", run_id: str | None = None) -> None:
        """Close the run (or ``run_id``) with ``status``: FINISHED, FAILED or KILLED."""
        target = run_id or self.run_id
        if self.active and target is not None:
            self._call("close the run", lambda: self.client.set_terminated(target, status))

    # -- data --------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as `flatten_params` writes them); keys the run already holds are
        left as they are (MLflow refuses to change a param: a resumed run may change a few
        settings that cannot bend its trajectory)."""
        if not self.active:
            return

        def log() -> None:
            from mlflow.entities import Param

            held = self.client.get_run(self.run_id).data.params
            todo = [Param(k, _param_text(v)) for k, v in params.items() if k not in held]
            for i in range(0, len(todo), BATCH):
                self.client.log_batch(self.run_id, params=todo[i : i + BATCH])

        self._call("log params", log)

    def set_tags(self, tags: Mapping[str, Any], run_id: str | None = None) -> None:
        target = run_id or self.run_id
        if not self.active or not tags:
            return

        def log() -> None:
            from mlflow.entities import RunTag

            items = [RunTag(k, _param_text(v)) for k, v in tags.items()]
            for i in range(0, len(items), BATCH):
                self.client.log_batch(target, tags=items[i : i + BATCH])

        self._call("set tags", log)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One point per metric at ``step``, in one request (NaN and infinities included)."""
        if not self.active or not metrics:
            return

        def log() -> None:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
            for i in range(0, len(items), 1000):
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

        self._call("log metrics", log)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which ``key`` was logged already (a retried epoch is not logged twice)."""
        if not self.active:
            return set()
        points = self._call(
            "read the metric history", lambda: self.client.get_metric_history(self.run_id, key)
        )
        return {int(p.step) for p in points or ()}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file or folder (a folder's files under ``artifact_path``)."""
        if not self.active:
            return
        p = Path(path)
        if p.is_dir():
            self._call(
                f"upload {p.name}",
                lambda: self.client.log_artifacts(self.run_id, str(p), artifact_path),
            )
        elif p.is_file():
            self._call(
                f"upload {p.name}",
                lambda: self.client.log_artifact(self.run_id, str(p), artifact_path),
            )

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        """Upload ``data`` as the artefact file ``name``."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory(prefix="segray-mlflow-") as tmp:
            (Path(tmp) / name).write_bytes(data)
            self.log_artifact(Path(tmp) / name, artifact_path)


# --------------------------------------------------------------------------- persistence
def saved_run_id(output: str, settings: TrackingSettings | None) -> str | None:
    """The run id kept in ``output``/tracking.json, if it was tracked on the same server."""
    if settings is None:
        return None
    from segray.storage import Location, with_retries

    loc = Location.parse(output).join(RUN_FILE)
    try:
        data = json.loads(with_retries(loc.read_bytes, what="read"))
    except (OSError, ValueError):  # none yet (or unreadable): a new run
        return None
    return data.get("run_id") if data.get("uri") == redact_uri(settings.uri) else None


def save_run_id(output: str, tracker: Tracker) -> None:
    """Keep the tracker's run id in ``output``/tracking.json (a resume reattaches to it)."""
    if not tracker.active or tracker.settings is None:
        return
    from segray.storage import Location, with_retries

    data = {
        "uri": redact_uri(tracker.settings.uri),  # the server, never its credentials
        "experiment_id": tracker.settings.experiment_id,
        "run_id": tracker.run_id,
    }
    loc = Location.parse(output).join(RUN_FILE)
    with_retries(loc.write, json.dumps(data, indent=2).encode(), what="write")
