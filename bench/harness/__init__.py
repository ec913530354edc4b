"""What every benchmark figure shares: settings and paths, the A/B arm rotation, child processes and their
timing, the synthetic data and MMAR copies, the FL job runs, the records, the table and the results file."""
