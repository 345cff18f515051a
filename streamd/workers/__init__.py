"""Several worker processes on one port, and the broker they share (see supervisor.py)."""
