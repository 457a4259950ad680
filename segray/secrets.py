"""No credential in any output: what segray persists, logs to MLflow, prints or reports goes
through `scrub` first.

* The user-info part of a URI (``https://user:token@host``, ``s3://KEY:SECRET@bucket``) is
  dropped: ``https://host``. The URI still names where the data went; whoever reads it brings
  their own credentials.
* The values of the credential environment variables (AWS keys, MLflow and Ray tokens) are
  replaced by ``***`` wherever they occur in text, should an error message or a setting have
  copied one.

The live objects keep the credentials (a tracking client needs its URI as given); only what
leaves the process is scrubbed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["SECRET_ENV", "redact_uri", "scrub", "scrub_text"]

# Environment variables whose values are credentials, wherever they are set.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)
MASK = "***"
MIN_SECRET = 6  # shorter values (a region, "1") would mask ordinary text
# scheme://userinfo@ inside any text: the user-info runs to the last "@" before the host.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/?#\s'\"<>@]*@")


def redact_uri(uri: str) -> str:
    """``uri`` without its user-info (``https://u:p@host:5000/x`` -> ``https://host:5000/x``);
    anything that is not such a URI comes back as it is."""
    if "://" not in uri or "@" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>", uri)
    if "@" not in parts.netloc:
        return _USERINFO.sub(r"\g<scheme>", uri)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))


def _env_secrets() -> list[str]:
    values = {os.environ.get(name, "") for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= MIN_SECRET), key=len, reverse=True)


def scrub_text(text: str) -> str:
    """``text`` with the user-info of every URI in it dropped and the value of every credential
    environment variable (`SECRET_ENV`) masked."""
    if "@" in text and "://" in text:
        text = _USERINFO.sub(r"\g<scheme>", text)
    for secret in _env_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub(value: Any) -> Any:
    """A copy of ``value`` (text, or dicts/lists/tuples of them, as JSON and YAML hold them) with
    every string scrubbed (`scrub_text`); keys are scrubbed too, other values kept."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    return value
