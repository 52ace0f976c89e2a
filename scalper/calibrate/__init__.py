"""Measure what signals are worth: every signal followed to its first touch (outcomes.py), a walk-forward win
probability (model.py, fit.py), its report (report.py), and the parameter search (tune.py)."""
