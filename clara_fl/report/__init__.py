"""``clara-fl report``: a run's results as pictures and one self-contained HTML page."""
