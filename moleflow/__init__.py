"""moleflow: a continual-learning anomaly-detection research harness."""

__version__ = "0.1.0"
