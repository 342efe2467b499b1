"""Evaluation: held-out preference metrics, answer generation, demo accuracy, judged benchmarks.

Submodules are imported on use (``from prefopt.evaluation.offline import evaluate_offline``) so
that importing the package stays cheap and free of torch for the table and figure scripts.
"""
