"""The decoding core every method builds on: the engine (layer-level access to the target model,
tree-masked forwards, a position-indexed KV cache), packed attention, draft trees and greedy
acceptance, the one shared decode loop (propose -> verify -> accept -> update cache), the Method
interface with its typed options, the trained-drafter base class, the checkpoint format, the
model loader (device and dtype rules), the supported-architecture check, the static
(CUDA-graph) autoregressive step, and planning draft shapes for the hardware (cost model,
planner, planning glue). It imports nothing else of the harness, so methods can depend on it alone.
"""
