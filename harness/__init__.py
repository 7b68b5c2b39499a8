"""spec-harness: one decode loop, many speculative decoding methods, honest paired timings."""

__version__ = "0.1.0"
