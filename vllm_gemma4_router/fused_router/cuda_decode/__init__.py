"""The fused router's CUDA C++ decode path (sm_90+): one launch of ``router_decode.cu``,
built at run time with NVRTC through torch, for the decode token counts the fused table
gives it (``launch_table.DECODE_PATH``); the Triton kernel wherever it cannot run."""
