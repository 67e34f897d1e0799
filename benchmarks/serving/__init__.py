"""Serving A/B: ``serve_ab`` (vllm bench serve), ``gsm8k_ab`` (lm_eval), in-tree vs
plugin, on shared machinery (``ab_common``); ``trace_summary`` reads profiler traces."""
