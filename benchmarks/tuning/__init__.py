"""Offline tuning: the sweeps that choose the launch rows (``sweep_launch_table``,
``sweep_fused_router``; ``--write-table`` writes the package's table files through
``table_writer``), what they sweep (``candidates``), what an offline compile of a
table row builds (``compile_specs``) and the offline compile-resource report
(``compile_resources``). Nothing here runs in a vLLM worker."""
