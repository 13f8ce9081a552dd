"""Helpers for the qlora-notebooks series: data, models, training, evaluation, plots, results."""
__version__ = "0.1.0"
