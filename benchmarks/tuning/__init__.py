"""Offline tuning: the sweeps that choose the launch rows (``sweep_launch_table``,
``sweep_fused_router``) and the offline compile-resource report
(``compile_resources``). Nothing here runs in a vLLM worker."""
