"""Evaluating what a search found: evaluation networks, complexity, retraining recipes."""
