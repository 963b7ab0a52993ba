"""gputext: NVIDIA GPU metrics for node_exporter's textfile collector, one run at a time."""

__version__ = "0.1.0"
