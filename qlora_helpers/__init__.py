"""Helpers for the qlora-notebooks series, in three layers.

The library (this folder's modules: data, modeling, training, evaluation, memory, export, ...) does
the work and knows nothing of notebooks; `notebook/` holds the steps the notebooks call, one function
per cell; `runners/` runs the series from the command line. Each layer imports only the ones below it.
"""
__version__ = "0.1.0"
