"""Standalone command-line faces of the workflows: train, validate, infer, export, synth.

Each module has ``add_parser(subparsers)`` and keeps heavy imports inside its ``run`` so that
``clara-fl --help`` stays fast.
"""
