"""Evaluation: metrics, product comparison, figures and the report."""
