"""Executors, one module per action family, and the runner that audits what they did."""
