"""Reading results and models for insight: the FIRP paper's analyses (layer probe, top-k per step,
cosine of pseudo and real states), the forward cost model c(n), planned draft shapes and draft
costs (plans.py), and every figure (plotting helpers in plotting.py). Imports train, bench, core
and methods, never cli.
"""
