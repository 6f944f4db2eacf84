"""FLOP counting: attention layers are counted through their matmuls (CPU SDPA kernel and eval fast path)."""

import torch

from rankcraft.nn.sequence import TransformerSequenceEncoder
from rankcraft.training.profile import count_parameters, flops_per_example


class _Wrap(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, b):
        return self.enc(b["seq"], b["mask"], b["t"])


def test_transformer_encoder_flops_match_hand_count():
    d, L, heads, B = 16, 10, 2, 4
    torch.manual_seed(0)
    model = _Wrap(TransformerSequenceEncoder(d, L, num_layers=1, num_heads=heads, ffn_mult=2))
    b = {"seq": torch.randn(B, L, d), "mask": torch.ones(B, L, dtype=torch.bool), "t": torch.randn(B, d)}
    T = L + 1  # the target token is appended
    qkv = 2 * T * d * 3 * d
    attention = 2 * 2 * T * T * d  # scores (T×T×d) and weighted sum (T×T×d), over all heads
    out_proj = 2 * T * d * d
    ffn = 2 * T * d * (2 * d) * 2
    assert flops_per_example(model, b) == qkv + attention + out_proj + ffn
    # counting leaves the model in its previous mode and the fast-path setting untouched
    assert model.training and torch.backends.mha.get_fastpath_enabled()


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8
