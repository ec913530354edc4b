"""BYOC code as Clara 4.0 MMARs wrote it for MONAI 0.5: numpy in and out, metadata in <key>_meta_dict."""

import numpy as np
from monai.metrics import compute_meandice  # noqa: F401  (removed in MONAI 1.0; Clara 4.0 code imported it)


class ClipIntensityd:
    """Clips intensities above ``upper``; checks it gets items the way MONAI 0.5 made them."""

    def __init__(self, keys, upper):
        self.keys = [keys] if isinstance(keys, str) else keys
        self.upper = upper

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            if not isinstance(d[key], np.ndarray):
                raise TypeError(f"expected a numpy array, got {type(d[key]).__name__}")
            if "filename_or_obj" not in d[f"{key}_meta_dict"]:
                raise KeyError(f"{key}_meta_dict has no filename_or_obj")
            d[key] = np.clip(d[key], None, self.upper)
        return d
