"""Runs: orchestration (`runner`), the ledger, a run's folder, metrics, the Predictor (everything
that predicts goes through it) and export."""
