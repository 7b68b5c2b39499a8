"""Sweeps: a grid of runs (spec.py), each cut into shards that a worker decodes with every method
of the run, baseline and A/A control included (shards.py), on this process or a Ray cluster
(executors.py); the driver merges each finished shard into its grid point's run directory,
exactly once (store.py, driver.py); `report SWEEP` prints one table per grid dimension (report.py)."""
