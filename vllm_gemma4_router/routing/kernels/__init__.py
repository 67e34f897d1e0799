"""The routing kernel's Triton code: ``entry`` (the kernel), ``keys`` (order-preserving
sort keys) and ``select`` (the top-K selections and the per-expert scale picks), the
latter two shared with the fused router's kernels."""
