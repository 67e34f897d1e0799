"""The harness around the runtime: the ``vllm-gemma4-router`` command, the demo and its servers.

Nothing here is imported by vLLM or by the runtime modules one level up; it is
what a person runs by hand (``selfcheck``, ``demo``) and what the tests and the
A/B benchmarks build on:

* ``cli``: the ``vllm-gemma4-router`` command;
* ``demo``: plugin vs in-tree vLLM server, routing evidence from the log, PASS/FAIL;
* ``serving``: ``VllmServer``, a loopback vLLM server that is always stopped;
* ``tiny_model``: the tiny random Gemma 4 MoE checkpoint (needs the ``[demo]`` extra);
* ``extras``: one clear line when an optional dependency is missing.
"""
