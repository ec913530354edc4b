"""What to say when a model file is missing but the run's final weights are right next to it.

A Clara training run writes ``models/model.pt`` (best key metric) only when validation runs, and
``models/final_model.pt`` (the last epoch) always. A newcomer who trains for fewer epochs than
``num_interval_per_valid`` has only the latter; every error that looks for model.pt says so.
"""

from __future__ import annotations

import os

__all__ = ["FINAL_MODEL_NAME", "final_model_hint"]

FINAL_MODEL_NAME = "final_model.pt"

# How each config item that names a model file is pointed at another file in a Clara MMAR.
_USE_IT = {
    "ckpt_path": "--set MMAR_CKPT={path}",
    "load_path": "--set MMAR_CKPT={path}",
    "ts_path": "--set dont_load_ts_model=True dont_load_ckpt_model=False MMAR_CKPT={path}",
}


def final_model_hint(missing: str, wanted_by: str, mmar_root: str | None = None) -> str:
    """A suffix for a "not found" message when ``final_model.pt`` sits next to the ``missing`` file.

    Args:
        missing: the model file that was looked for.
        wanted_by: what named it: a config item (``ckpt_path``, ``load_path``, ``ts_path``, which Clara
            MMARs fill from ``MMAR_CKPT``/``MMAR_TORCHSCRIPT``) or a command-line flag (``--model_path``).
        mmar_root: paths inside it are shown relative to it, as ``--set`` and the flags take them.

    Returns:
        ``" (models/final_model.pt holds ...: use it with ...)"``, or ``""`` when there is no such file.
    """
    folder = os.path.dirname(missing)
    final = os.path.join(folder, FINAL_MODEL_NAME)
    if os.path.basename(missing) == FINAL_MODEL_NAME or not os.path.isfile(final):
        return ""
    if wanted_by == "ts_path" and os.path.isfile(os.path.join(folder, "model.pt")):
        return ""  # a best model exists: what is missing is its export, not the weights
    shown = final
    if mmar_root and os.path.abspath(final).startswith(os.path.abspath(mmar_root) + os.sep):
        shown = os.path.relpath(os.path.abspath(final), os.path.abspath(mmar_root))
    flag = _USE_IT.get(wanted_by, f"{wanted_by} {{path}}").format(path=shown)
    return (
        f" ({shown} holds the weights of the last epoch; model.pt, the best key-metric model, is written only "
        f"when validation runs: use it with {flag})"
    )
