"""MMAR -> MONAI bundle: Clara configs translated to ``monai.bundle`` syntax (``clara-fl bundle export``)."""
