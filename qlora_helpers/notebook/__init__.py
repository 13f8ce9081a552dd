"""The notebook steps: what the cells of the four notebooks call, one function per cell.

experiment (the training notebooks 01-03), comparison and plots (04), parameters (each notebook's
parameters cell, checked), results (the results.json every training notebook writes and 04 reads)
and install (the source of each notebook's first cell). They print or return what a cell shows and
build on the library one level up; nothing here is needed to use the library without notebooks.
"""
