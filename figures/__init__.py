"""Regenerate every figure and table: ``python -m figures`` (see figures/__main__.py)."""

# Experiment modules in the order their figures appear in the README.
REGISTRY = [
    "experiments.loss_gap",
    "experiments.width_vs_n",
    "experiments.gmm_2d",
    "experiments.gmm_sweeps",
    "experiments.gmm_pruning",
    "experiments.dit_pruning",
    "experiments.mitigation",
    "experiments.mitigation_dit",
]
