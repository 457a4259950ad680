"""Retries of whole storage operations that failed transiently.

pyarrow's S3 client retries each HTTP request itself (``AwsStandardS3RetryStrategy(max_attempts=3)``:
throttling, 5xx, dropped connections), so a single 503 never reaches Python. `with_retries`
wraps a whole operation (a write, a listing) and retries it when pyarrow gave up on a transient
error; it counts those retries per operation in `retry_counts`.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_RETRIES: Counter[str] = Counter()
_LOCK = threading.Lock()
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_PERMANENT = re.compile(
    r"access.?denied|forbidden|no.?such.?(bucket|key)|does not exist|invalid.?access.?key"
    r"|signature.?does.?not.?match|not.?found",
    re.I,
)
_TRANSIENT = re.compile(
    r"retr(y|ied)|(http status|status code)[: ]*5\d\d|slow.?down|throttl|too many requests"
    r"|connection (reset|closed|refused|aborted)|timeout|timed out|curl|network.?connection"
    r"|service.?unavailable|internal.?(error|failure)|broken pipe|empty reply",
    re.I,
)


def is_transient(e: BaseException) -> bool:
    """Whether retrying the same operation may succeed: throttling, 5xx, dropped or refused
    connections, timeouts. A missing file or bucket or a denied request is not transient."""
    if isinstance(e, _NOT_TRANSIENT):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(e, OSError):
        return False
    text = str(e)
    return not _PERMANENT.search(text) and bool(_TRANSIENT.search(text))


def with_retries(
    fn: Callable[..., T],
    *args: Any,
    what: str,
    attempts: int = 5,
    base_delay: float = 0.2,
    **kwargs: Any,
) -> T:
    """``fn(*args, **kwargs)``, retried up to ``attempts`` times in all with exponential
    backoff and jitter when it fails transiently (`is_transient`); any other error, or the
    last one, is raised. Each retry is counted under ``what`` (see `retry_counts`)."""
    if attempts < 1:
        raise ValueError(f"with_retries({what!r}): attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if attempt + 1 >= attempts or not is_transient(e):
                raise
            with _LOCK:
                _RETRIES[what] += 1
            time.sleep(base_delay * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def retry_counts() -> dict[str, int]:
    """Retries made by `with_retries` in this process so far: ``what`` -> count."""
    with _LOCK:
        return dict(_RETRIES)
