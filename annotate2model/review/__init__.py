"""Judging predictions: misclassified images, likely label errors, uncertainty (flag-back)."""
