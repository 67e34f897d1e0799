"""Everything that knows vLLM, and the only room that imports it.

``custom_ops`` defines the CustomOps ``gemma4_routing`` and ``gemma4_fused_router``;
``gemma4_layouts`` knows where each vLLM release keeps Gemma 4's routing and
installs ours there (or refuses, in one log line); ``import_hook`` runs that
install when vLLM imports its Gemma 4 module.
"""
