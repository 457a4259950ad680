"""The private Ray names that `segray.cluster` reads, imported here exactly as it imports them
and with no fallback: a Ray upgrade that moves or renames one fails here, loudly, instead of
silently turning an autoscaling cluster into a static one or leaving every worker's report
logging on (no Ray cluster needed)."""

from __future__ import annotations

import inspect
import logging


def test_autoscaler_configuration_is_where_autoscaling_limits_reads_it():
    from ray._private.state import GlobalState, state

    from segray import cluster

    assert isinstance(state, GlobalState)
    for name in ("get_cluster_config", "get_max_resources_from_cluster_config"):
        assert callable(getattr(state, name)), name
        assert name in inspect.getsource(cluster.autoscaling_limits), name
    assert "from ray._private.state import state" in inspect.getsource(cluster.autoscaling_limits)


def test_train_report_logger_is_the_one_ray_train_reports_to():
    from ray.train.v2._internal.execution import context

    from segray.cluster import train_report_logger

    assert isinstance(context.logger, logging.Logger)
    assert context.logger.name == context.__file__  # named after the file, not the module
    assert train_report_logger() is context.logger
