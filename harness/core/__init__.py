"""The decoding core every method builds on: the engine (layer-level access to the target model,
masked forwards of new rows; its lean decoder layers), the KV cache (per-sequence lengths, slot-indexed writes), packed
attention, batched draft trees, acceptance rules, the one shared decode loop
(propose -> verify -> accept -> update cache), the Method protocol and its typed options, the
trained-drafter base class, the checkpoint format, the model loader (device and dtype rules), the
supported-architecture check, the static one-row step (CUDA graphs), the linear formulations
chosen per row count, timing primitives, and planning/ (draft shapes
for the hardware: cost model, planner, `auto` shapes). It imports nothing else of the harness, so
methods can depend on it alone.
"""
