"""Serving a trained model: web page, REST API, Label Studio ML backend (serving issue)."""
