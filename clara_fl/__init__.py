"""clara-fl: Clara Train 4.1 MMARs on MONAI and NVIDIA FLARE.

The package imports nothing heavy at top level so that ``clara-fl --help`` and job creation stay fast.
"""

__version__ = "0.1.0"
