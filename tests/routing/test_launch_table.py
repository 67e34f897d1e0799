"""The launch table gives a valid launch shape for every supported width and batch."""

import pytest

from vllm_gemma4_router.routing.launch_table import MAX_EXPERTS, pick_launch_config

WIDTHS = [1 << b for b in range(MAX_EXPERTS.bit_length())]
TOKENS = [1, 2, 3, 1000, 1024, 1025, 8192, 8193, 65536, 65537, 262144, 10**6]


@pytest.mark.parametrize("platform", ["cuda", "hip", "xpu", "interpreter"])
@pytest.mark.parametrize("fp32_logits", [True, False])
def test_every_width_and_batch_gets_a_power_of_two_shape(platform, fp32_logits):
    for block_e in WIDTHS:
        for num_tokens in TOKENS:
            config = pick_launch_config(num_tokens, block_e, platform, fp32_logits)
            tpp, warps = config.tokens_per_program, config.num_warps
            assert tpp >= 1 and tpp & (tpp - 1) == 0, (block_e, num_tokens, config)
            assert warps in (1, 2, 4, 8), (block_e, num_tokens, config)
            assert tpp * block_e <= 1 << 16, (block_e, num_tokens, config)


def test_decode_batches_get_one_warp_per_token():
    # Latency-bound sizes: one warp per token (the sweeps never favoured
    # sharing a warp there).
    for block_e in (64, 128, 256):
        for fp32 in (True, False):
            for num_tokens in (1, 256):
                config = pick_launch_config(num_tokens, block_e, "cuda", fp32)
                assert config.tokens_per_program == config.num_warps
