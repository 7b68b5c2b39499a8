"""Reading results and models for insight: the FIRP paper's analyses (layer probe, top-k per step,
cosine of pseudo and real states), the forward cost model c(n), planned draft shapes and draft
costs (plans.py), every figure (plotting helpers in plotting.py), and the device checks: doctor
(one model) and gpu-check (the GPU path), with their shared decode checks in decodecheck.py.
Imports train, bench, core and methods, never cli.
"""
