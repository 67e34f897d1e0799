"""The fused router's Triton code (``entry``: the one-launch kernel and its finishing pass)."""
