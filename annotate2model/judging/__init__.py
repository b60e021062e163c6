"""Judging runs across dataset versions: `compare` (one table on common test images, intervals and
paired tests), `curve` (learning curves on nested subsets), `report` (one HTML file) and plots.

Reads runs through the ledger and the Predictor; records what it judged through the ledger.
"""
