"""No credential in any output (`segray.secrets`): the user-info of a URI is dropped, and the
values of the credential environment variables are masked, before anything is persisted,
logged to MLflow, printed or reported.

The integration test sets known secrets in the environment (AWS keys, an MLflow password) and
in the tracking URI (``http://user:TOKEN@host``), runs ``segray train``, ``tune``, ``auto
--dry-run`` and ``report`` against a real MLflow server, and searches every file they wrote
(the server's database and artefacts included) and everything they printed for the secrets.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from segray.config import load_config
from segray.secrets import redact_uri, scrub, scrub_text
from segray.tracking import (
    Tracker,
    TrackingSettings,
    TrackingWarning,
    flatten_params,
    save_run_id,
    saved_run_id,
)
from tests.conftest import TINY

URI_SECRET = "URIsecretTOKEN4711"
ENV_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAENVSECRETKEY0042",
    "AWS_SECRET_ACCESS_KEY": "envSecretAccessKey/4242+abcdef",
    "AWS_SESSION_TOKEN": "envSessionTokenQWERTY9876",
    "MLFLOW_TRACKING_PASSWORD": "envMlflowPasswordZXCV5555",
}
SECRETS = (URI_SECRET, "tokenuser", *ENV_SECRETS.values())


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# --------------------------------------------------------------------------- units
@pytest.mark.parametrize(
    ("uri", "clean"),
    [
        ("http://user:pw@127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://tok@mlflow.lab.org/api?x=1#f", "https://mlflow.lab.org/api?x=1#f"),
        ("s3://KEY:SECRET@bucket/runs/a", "s3://bucket/runs/a"),
        ("https://a:b@c@host/x", "https://host/x"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("/data/me@home/runs", "/data/me@home/runs"),
        ("mailto:someone@example.org", "mailto:someone@example.org"),
        ("databricks", "databricks"),
    ],
)
def test_redact_uri_drops_only_the_user_info(uri: str, clean: str):
    assert redact_uri(uri) == clean


def test_scrub_text_drops_user_info_in_messages_and_masks_credential_env(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcdef123456")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # not a credential
    text = "GET https://u:p4ss@h:1/a failed; key abcdef123456 in eu-west-1 (see me@host)"
    assert scrub_text(text) == "GET https://h:1/a failed; key *** in eu-west-1 (see me@host)"
    nested = {"a": ["s3://k:s@b/p", ("x", 1)], "abcdef123456": None, "n": 2.5}
    assert scrub(nested) == {"a": ["s3://b/p", ("x", 1)], "***": None, "n": 2.5}


def test_the_config_dump_holds_no_user_info_and_the_live_config_keeps_it(tmp_path: Path):
    uri = f"http://tokenuser:{URI_SECRET}@127.0.0.1:5000"
    cfg = load_config(None, [f"tracking.mlflow_uri={uri}", "data.root=s3://K:S3CRETKEY@b/d"])
    assert cfg.tracking.mlflow_uri == uri  # the tracker still reaches the server
    dumped = cfg.save(tmp_path / "config.yaml").read_text()
    assert not _leaks(dumped) and "S3CRETKEY" not in dumped
    again = load_config(tmp_path / "config.yaml")
    assert again.tracking.mlflow_uri == "http://127.0.0.1:5000"
    assert again.data.root == "s3://b/d"


def test_params_warnings_and_tracking_json_hold_no_user_info(tmp_path: Path):
    uri = f"http://tokenuser:{URI_SECRET}@127.0.0.1:9"  # port 9: nothing listens
    cfg = load_config(None, [f"tracking.mlflow_uri={uri}"])
    params = flatten_params(cfg.to_dict())
    assert params["tracking.mlflow_uri"] == "http://127.0.0.1:9"
    from segray.tracking import _param_text

    assert _param_text(f"see {uri}") == "see http://127.0.0.1:9"

    tracker = Tracker(TrackingSettings(uri=uri))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker._call("open a run", lambda: (_ for _ in ()).throw(OSError(f"{uri} refused")))
    (warning,) = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert "http://127.0.0.1:9" in str(warning.message) and not _leaks(str(warning.message))

    live = Tracker(TrackingSettings(uri=uri), run_id="abc")
    save_run_id(str(tmp_path), live)
    saved = (tmp_path / "tracking.json").read_text()
    assert not _leaks(saved) and json.loads(saved)["uri"] == "http://127.0.0.1:9"
    assert saved_run_id(str(tmp_path), live.settings) == "abc"  # a resume still reattaches


def test_run_summaries_and_plans_hold_no_credential(tmp_path: Path, monkeypatch):
    """plan.json, auto_summary.json and the search's summaries go through one JSON writer;
    an input URI with user-info or an environment credential copied into a value is dropped."""
    from segray.storage import write_json

    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    data = {
        "data": f"s3://tokenuser:{URI_SECRET}@bucket/cells",
        "reasons": {"x": f"copied {ENV_SECRETS['AWS_SECRET_ACCESS_KEY']} by mistake"},
        "plan": {"epochs": 12, "folds": None, "notes": ["ok"]},
    }
    write_json(str(tmp_path / "plan.json"), data)
    text = (tmp_path / "plan.json").read_text()
    saved = json.loads(text)
    assert not _leaks(text) and saved["data"] == "s3://bucket/cells"
    assert saved["plan"] == data["plan"]


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def secret_env(request) -> Iterator[None]:
    """The credentials in the environment of this process and of its Ray (started after)."""
    old = {k: os.environ.get(k) for k in (*ENV_SECRETS, "MLFLOW_TRACKING_USERNAME")}
    os.environ.update(ENV_SECRETS, MLFLOW_TRACKING_USERNAME="tokenuser")
    try:
        request.getfixturevalue("ray_local")
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[object]:
    from tests.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.mark.integration
@pytest.mark.slow
def test_train_tune_auto_and_report_output_no_credential(
    secret_env, mlflow_server, tmp_path: Path, capfd
):
    from mlflow.tracking import MlflowClient

    from segray.cli import main
    from segray.data.synth import generate

    host = mlflow_server.uri.removeprefix("http://")
    tracked = [f"tracking.mlflow_uri=http://tokenuser:{URI_SECRET}@{host}"]
    train, tune = tmp_path / "train", tmp_path / "tune"
    small = [*TINY, "train.epochs=1", *tracked]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--output", str(train), *small]) == 0
        space = "tune.space={optim.lr: {loguniform: [1.0e-3, 1.0e-2]}}"
        tune_args = [*small, "tune.num_samples=2", "tune.scheduler=none", space]
        assert main(["tune", "--output", str(tune), *tune_args]) == 0
        data = generate(tmp_path / "data", num=16, size=32, seed=1)
        auto = ["auto", "--data", str(data), "--output", str(tmp_path / "auto")]
        assert main([*auto, "--time-budget", "2m", "--dry-run", *tracked]) == 0
        assert main(["report", str(train)]) == 0
        assert main(["report", str(tune)]) == 0
    printed = capfd.readouterr()
    shown = printed.out + printed.err + "\n".join(str(w.message) for w in caught)

    # The runs were tracked: the credentials reached the server, just not any output.
    client = MlflowClient(mlflow_server.uri)
    run_id = json.loads((train / "tracking.json").read_text())["run_id"]
    params = client.get_run(run_id).data.params
    assert params["tracking.mlflow_uri"] == mlflow_server.uri

    assert (train / "report.html").is_file() and (tune / "report.html").is_file()
    assert "tracking:" in shown  # the dry run printed its config
    written = [p for root in (tmp_path, mlflow_server.root) for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "tracking.json", "summary.json", "report.html"} <= names
    leaks = {str(p): found for p in written if (found := _leaks(p.read_bytes().decode("latin-1")))}
    assert not leaks, f"credentials written to {leaks}"
    assert not _leaks(shown), f"credentials printed: {_leaks(shown)}"
