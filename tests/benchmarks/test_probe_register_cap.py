"""The register-cap probe launches what the launcher launches, plus one compile option."""

import pytest
import torch
from oracle import assert_matches_oracle

from benchmarks.tuning import probe_register_cap as probe


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens", [29, 16385])
def test_capped_plan_is_the_bucket_row_with_maxnreg(dtype, num_tokens):
    plain = probe.capped_plan(num_tokens, 128, 8, dtype, 0)
    capped = probe.capped_plan(num_tokens, 128, 8, dtype, 64)
    assert "maxnreg" not in plain.constexprs
    assert capped.constexprs == {**plain.constexprs, "maxnreg": 64}
    assert capped.tokens_per_program == plain.tokens_per_program
    # a compiled kernel of its own: the cached launches key on the class key
    assert capped.class_key != plain.class_key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capped_launch_routes_like_the_oracle(dtype):
    # On the CPU the interpreter ignores compile options: this holds the probe's
    # launch (arguments in the launcher's order, a partial last tile) to the oracle.
    gen = torch.Generator().manual_seed(1234)
    logits = (torch.randn(29, 128, generator=gen) * 2).to(dtype)
    logits[::7, 3] = logits[::7, 5]
    scale = torch.rand(128, generator=gen) + 0.5
    weights, ids = probe.route(probe.capped_plan(29, 128, 8, dtype, 64), logits, 8, scale)
    assert_matches_oracle(weights, ids, logits, 8, scale)
