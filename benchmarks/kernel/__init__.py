"""Kernel micro-benchmarks: the routing op (``bench_kernel``), the router chain and
fused router (``bench_router``), the fused router's stages, the padding mask's cost."""
