"""Draft shapes planned for the hardware, in one place: the cost model of the target's forward
c(n) with draft costs and loop overheads (costmodel.py), the hardware-independent half (tokens per
step from a method's acceptance profile, planner.py), and what a method's `auto` shape option
resolves to (shapes.py: plan_shape, chain_k, grid_point). Imports core only, so methods can use it.
The commands that measure cost models and print plans (`costmodel`, `plan`) drive it from
harness/analysis/costmodel.py and plans.py.
"""
