"""annotate2model: Label Studio annotations in, versioned datasets and trained classifiers out."""

__version__ = "0.1.0"
