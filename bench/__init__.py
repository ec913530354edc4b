"""clara-fl's benchmarks: ``bench/run.py`` (the suite, on :mod:`bench.harness`, one module per figure in
:mod:`bench.figures`) and the stand-alone scripts beside it."""
