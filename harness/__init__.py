"""spec-harness: one decode loop, many speculative decoding methods, honest paired timings.

Subpackages by role; imports point downward only (tests/test_layout.py checks it):

    cli/       click commands                         -> analysis, train, bench, core, methods
    analysis/  analyses, cost model, figures          -> train, bench, core, methods
    train/     distillation, drafter training, search -> bench, core, the methods registry
    bench/     data, runner, records, metrics, report -> core, the methods registry
    core/      engine, tree, decode loop, Method      -> nothing else of the harness

methods/ (one file per method) imports core and train; its `__init__` is the name -> class
registry, which imports nothing at import time.
"""

__version__ = "0.1.0"
