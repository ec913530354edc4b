"""Data lists and synthetic data."""
