"""fedvlm benchmarks (``make bench``): speed and memory figures recorded in docs/BENCHMARKS.md."""
