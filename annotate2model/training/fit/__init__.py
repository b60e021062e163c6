"""Fitting: the probe (a scikit-learn head on cached features) and fine-tuning (the torch loop),
with what a trainer is given (`jobs.TrainJob`) and hands back (`jobs.TrainResult`)."""
