"""Datasets: 2-D toy distributions and image datasets."""
