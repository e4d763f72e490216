"""Accuracy the user can trust: the samples (samples), the measured agreement of a split with the
unsplit model on them (evaluate), and its statistics (agreement)."""
