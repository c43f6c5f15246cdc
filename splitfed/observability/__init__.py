"""Observability: metrics (CSV, TensorBoard, PNG), JSON logs, progress bars and the server's status file."""

from splitfed.memory import peak_rss_bytes, resident_bytes
from splitfed.observability.logs import JsonFormatter
from splitfed.observability.metrics import MetricsWriter, plot_metrics, read_metrics
from splitfed.observability.progress import progress_bar
from splitfed.observability.status import read_status, write_status

__all__ = ["JsonFormatter", "MetricsWriter", "peak_rss_bytes", "plot_metrics", "progress_bar", "read_metrics",
           "read_status", "resident_bytes", "write_status"]
