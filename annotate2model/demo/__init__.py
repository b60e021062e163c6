"""`a2m demo`: the tour (tour.py: a local Label Studio, two versions trained and compared, the
doubts flagged back) and the street-sign images it draws (signs.py)."""
