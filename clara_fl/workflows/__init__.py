"""Built workflows: a config turned into a runnable trainer or evaluator.

Standalone commands and FL executors both build through these classes (one core, two faces).
"""
