"""GPU benchmarks, launch-table sweeps and A/B harnesses (run as ``python -m benchmarks.<name>``)."""
