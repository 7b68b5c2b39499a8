"""Benchmark runs and their numbers: datasets and chat prompts, the run's validation (everything
checked before anything loads), the runner (paired per-turn
timing of every method on every sample), results records and run directories, metrics (speedup,
tau, quality, losslessness), hardware telemetry, the report table and the CI regression check.
Imports core and the methods registry (`methods`, name -> class), never train, analysis or cli.
"""
