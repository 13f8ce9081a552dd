"""Tables that show their text whole."""
from __future__ import annotations

import pandas as pd


class FullText(pd.DataFrame):
    """A DataFrame whose cells show whole in a notebook: pandas cuts text at 50 characters and ends it
    with '...', which hides the explanations our tables exist to give. Scoped to this table's display,
    not pandas' global option."""

    @property
    def _constructor(self):
        return FullText

    def _repr_html_(self):
        with pd.option_context("display.max_colwidth", None):
            return super()._repr_html_()

    def __repr__(self):
        with pd.option_context("display.max_colwidth", None):
            return super().__repr__()
