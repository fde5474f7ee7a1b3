"""MLflow for distmeta: tracked training runs and stream evaluations, Model Registry export,
an adapt-then-predict pyfunc, and registered models loaded back for evaluation.

Sits above :mod:`distmeta.engine`; nothing below imports it.
"""

from distmeta.tracking.export import ExportResult, export_model, load_registered_run
from distmeta.tracking.plots import plot_stream
from distmeta.tracking.pyfunc import AdaptThenPredict, TaskSpec
from distmeta.tracking.store import resolve_tracking_uri
from distmeta.tracking.streams import StreamTracker
from distmeta.tracking.tracker import MLflowTracker

__all__ = [
    "AdaptThenPredict",
    "ExportResult",
    "MLflowTracker",
    "StreamTracker",
    "TaskSpec",
    "export_model",
    "load_registered_run",
    "plot_stream",
    "resolve_tracking_uri",
]
