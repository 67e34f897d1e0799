"""GPU benchmarks, launch-table sweeps and A/B harnesses (``python -m benchmarks.<name>``)."""
