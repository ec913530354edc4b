"""The suite's figures, one module each, registered by number in the order ``bench/run.py`` runs them."""

from __future__ import annotations

import importlib

from bench.harness.figure import Figure

MODULES = (
    "fig1_standalone",
    "fig2_startup",
    "fig3_bundle_peer",
    "fig4_round_overhead",
    "fig5_memory",
    "fig6_fl_quality",
    "fig7_gpu",
    "fig8_algorithms",
    "fig9_he",
    "fig10_scale",
    "fig11_robust",
)

FIGURES: dict[str, Figure] = {
    figure.number: figure for figure in (importlib.import_module(f"{__name__}.{name}").FIGURE for name in MODULES)
}
