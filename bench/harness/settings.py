"""The suite's settings (full and ``--quick``) and the paths every figure uses."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
MMAR = ROOT / "mmars" / "spleen_ct_seg"
PROBE = BENCH / "probe"
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Settings:
    pairs: int = 7  # standalone A/B pairs (figures 1-3)
    epochs: int = 3  # standalone epochs
    fl_pairs: int = 3  # FL A/B pairs (figures 4-6)
    rounds: int = 20  # FL rounds (figure 5 wants 20)
    local_epochs: int = 1
    quality_rounds: int = 10  # figure 6: FedAvg rounds x local epochs = the centralized epochs
    quality_local_epochs: int = 5
    quality_seeds: tuple[int, ...] = (0, 1, 2)  # figure 6: one FedAvg / centralized pair per seed
    warmup_rounds: int = 2  # rounds left out of the round-overhead figure (first tasks)
    memory_warmup_rounds: int = 5  # rounds left out of the RSS slope (allocator and caches fill up)
    memory_rounds: int = 100  # figure 5's long run: clara-fl alone, site and server RSS per round
    memory_long_warmup_rounds: int = 10  # rounds left out of the long run's slope
    roi: int = 16
    shape: int = 32
    cases: int = 12
    lr: float = 1e-3
    standalone_threads: int = 2  # OMP_NUM_THREADS for both sides of figures 1-3 (= the cores)
    fl_threads: int = 1  # per simulated site (cores / 2 sites), as clara-fl simulate sets it
    timeout_s: int = 900
    algorithm_rounds: int = 10  # figure 8: rounds x local epochs = the epochs of centralized and site-alone training
    algorithm_local_epochs: int = 3
    algorithm_seed: int = 0
    algorithm_seeds: tuple[int, ...] = (0, 1, 2)  # figure 8: every arm once per seed
    algorithm_sites: tuple[int, ...] = (2, 3)  # figure 8: the numbers of sites (each site's share of the cases)
    algorithm_datasets: tuple[str, ...] = ("identical", "differing")  # figure 8: the sites' data sets to run
    he_rounds: int = 6  # figure 9: rounds of each of the two jobs (round 0 and the last are not timed)
    he_local_epochs: int = 1  # figure 9: local epochs per round (HE's cost per round is the same whatever they are)
    scale_sites: tuple[int, ...] = (2, 4, 8)  # figure 10: simulated sites, one job each
    scale_rounds: int = 4  # figure 10: rounds of each job (round 0 and the last are not timed)
    scale_cases_per_site: int = 6  # figure 10: every site has the same data, whatever the number of sites

    @property
    def mode(self) -> str:
        return "quick" if self == QUICK else "full" if self == Settings() else "custom"


QUICK = Settings(
    pairs=1,
    epochs=2,
    fl_pairs=1,
    rounds=4,
    warmup_rounds=1,
    memory_warmup_rounds=1,
    quality_rounds=2,
    quality_local_epochs=1,
    quality_seeds=(0,),
    algorithm_rounds=2,
    algorithm_local_epochs=1,
    algorithm_seeds=(0,),
    algorithm_sites=(2,),
    he_rounds=3,
    memory_rounds=6,
    memory_long_warmup_rounds=1,
    scale_sites=(2, 3),
    scale_rounds=3,
)
