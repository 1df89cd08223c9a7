import pytest
import torch

from components.quant.packing import pack_bits, pack_codes, unpack_bits, unpack_codes


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_round_trips_exactly(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (3, 5, 64), generator=gen, dtype=torch.int64).to(torch.uint8)
    codes[0, 0, :] = 2**bits - 1  # all-ones words exercise the int32 sign bit
    words = pack_codes(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (3, 5, 64 * bits // 32)
    assert torch.equal(unpack_codes(words, bits), codes)


def test_two_bit_codes_are_sixteen_per_word_lsb_first():
    codes = torch.tensor([[1, 2, 3] + [0] * 13], dtype=torch.uint8)
    word = pack_codes(codes, 2)
    assert word.shape == (1, 1)
    assert int(word) == 1 | (2 << 2) | (3 << 4)


def test_partial_word_is_zero_padded():
    codes = torch.tensor([3, 1, 2], dtype=torch.uint8)
    words = pack_codes(codes, 4)
    assert words.shape == (1,)
    assert torch.equal(unpack_codes(words, 4, 3), codes)


def test_out_of_range_code_is_rejected():
    with pytest.raises(ValueError, match="out of range for 2 bits"):
        pack_codes(torch.tensor([0, 4]), 2)


def test_bit_map_round_trips():
    mask = torch.rand(4, 37, generator=torch.Generator().manual_seed(0)) > 0.6
    packed = pack_bits(mask)
    assert packed.shape == (4, 5) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, 37), mask)
