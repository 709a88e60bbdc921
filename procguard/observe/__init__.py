"""Seeing the daemon: the event stream, alerts and Prometheus metrics."""
