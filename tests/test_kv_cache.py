"""The KV cache's size by formula equals what its tensors hold; GQA's saving; the step-time sweep (no timing asserted)."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from workshop_utils.kv_cache import gqa_saving, head_dim, kv_cache_bytes, kv_heads, measured_cache_bytes, memory_table
from workshop_utils.timing import StepPoint, step_seconds_sweep, step_table


@pytest.fixture(scope="module")
def tiny_llama(tiny_model):
    """Three layers, six query heads sharing two kv-heads of size 8."""
    return tiny_model("llama", vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                      max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_model):
    return tiny_model("gpt2", vocab_size=97, n_positions=64)


def _filled_cache(model, positions: int, batch_size: int = 1):
    ids = torch.randint(0, model.config.vocab_size, (batch_size, positions))
    with torch.inference_mode():
        return model(ids, use_cache=True).past_key_values


def test_default_model_formula_matches_its_cache(model, tokenizer):
    config = model.config
    # The numbers COURSE.md states for the default model, written out independently of the code.
    assert (config.num_hidden_layers, kv_heads(config), config.num_attention_heads, head_dim(config)) == (30, 3, 9, 64)
    ids = tokenizer("The KV cache keeps the keys and values of every position.", return_tensors="pt").input_ids
    with torch.inference_mode():
        cache = model(ids.to(model.device), use_cache=True).past_key_values
    assert isinstance(cache, DynamicCache)
    n = ids.shape[1]
    assert measured_cache_bytes(cache) == kv_cache_bytes(config, n) == 30 * 2 * 3 * 64 * n * 4
    assert gqa_saving(config) == 3.0
    full = kv_cache_bytes(config, n, n_kv_heads=config.num_attention_heads)
    assert full == 3 * kv_cache_bytes(config, n)


@pytest.mark.parametrize("positions,batch_size", [(1, 1), (7, 1), (13, 3)])
def test_tiny_llama_formula_matches_measured(tiny_llama, positions, batch_size):
    cache = _filled_cache(tiny_llama, positions, batch_size)
    expected = 3 * 2 * 2 * 8 * positions * 4 * batch_size  # layers, k+v, kv-heads, head dim 48/6, float32
    assert kv_cache_bytes(tiny_llama.config, positions, batch_size=batch_size) == expected
    assert measured_cache_bytes(cache) == expected
    assert gqa_saving(tiny_llama.config) == 3.0


def test_gpt2_has_one_kv_head_per_query_head(tiny_gpt2):
    cache = _filled_cache(tiny_gpt2, 9)
    assert kv_heads(tiny_gpt2.config) == 4 and head_dim(tiny_gpt2.config) == 8
    assert measured_cache_bytes(cache) == kv_cache_bytes(tiny_gpt2.config, 9) == 2 * 2 * 4 * 8 * 9 * 4
    assert gqa_saving(tiny_gpt2.config) == 1.0


def test_formula_scales_with_dtype_and_grows_with_the_cache(tiny_llama):
    config = tiny_llama.config
    assert kv_cache_bytes(config, 10, dtype=torch.float16) * 2 == kv_cache_bytes(config, 10)
    assert kv_cache_bytes(config, 0) == 0
    cache = _filled_cache(tiny_llama, 5)
    with torch.inference_mode():
        tiny_llama(torch.tensor([[3]]), past_key_values=cache, use_cache=True)
    assert measured_cache_bytes(cache) == kv_cache_bytes(config, 6)


def test_empty_cache_measures_zero():
    assert measured_cache_bytes(DynamicCache()) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"positions": -1}, "positions"),
    ({"positions": 2.5}, "positions"),
    ({"positions": 4, "batch_size": 0}, "batch_size"),
    ({"positions": 4, "dtype": "float32"}, "dtype"),
    ({"positions": 4, "n_kv_heads": 0}, "n_kv_heads"),
])
def test_formula_rejects_bad_input(tiny_llama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kv_cache_bytes(tiny_llama.config, **kwargs)


def test_measured_rejects_a_non_cache():
    with pytest.raises(ValueError, match="past_key_values"):
        measured_cache_bytes((torch.zeros(2, 2),))


def test_memory_table_lists_each_length():
    # The default model's shape: 30 layers, 9 query heads, 3 kv-heads of 64; float32.
    config = LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3)
    lines = memory_table(config, positions=(1024, 8192)).text.splitlines()
    assert "3 kv-heads" in lines[0] and "9 kv-heads" in lines[0]
    # 30 x 2 x 3 x 64 x 1024 x 4 bytes = 45 MiB with GQA, three times that with a kv-head per query head.
    assert [line.split() for line in lines[2:]] == [["1,024", "45.0", "135.0", "90.0"],
                                                   ["8,192", "360.0", "1080.0", "720.0"]]


def test_step_sweep_one_point_per_length_and_leaves_no_trace(tiny_llama, counting_model):
    ids = torch.randint(0, 97, (1, 20))
    before = ids.clone()
    counting = counting_model(tiny_llama)
    points = step_seconds_sweep(counting, ids, lengths=(4, 20), repeats=2)
    assert [p.positions for p in points] == [4, 20]
    assert all(p.uncached_s > 0 and p.cached_s > 0 for p in points)
    # At each length n: n positions re-fed (a warm-up and two repeats), the cache filled with n - 1, then one
    # position on it, three times: each timed step finds the cache as it was, the step before it left no trace.
    expected = [call for n in (4, 20) for call in [(n, 0)] * 3 + [(n - 1, 0)] + [(1, n - 1)] * 3]
    assert counting.calls == expected
    assert torch.equal(ids, before)
    assert "cache speedup" in step_table(points).text


@pytest.mark.parametrize("lengths,match", [((), "lengths"), ((1,), "lengths"), ((30,), "longer prompt")])
def test_step_sweep_rejects_bad_lengths(tiny_llama, lengths, match):
    with pytest.raises(ValueError, match=match):
        step_seconds_sweep(tiny_llama, torch.zeros(1, 20, dtype=torch.long), lengths=lengths)


def test_step_point_speedup():
    assert StepPoint(10, uncached_s=0.3, cached_s=0.1).speedup == pytest.approx(3.0)


# --- the notebook 04 checks ---

from workshop_utils.checks import CheckFailed, check_cache_mib, check_cached_loop, check_positions_fed  # noqa: E402


def test_check_positions_fed_accepts_the_sums_and_names_mistakes(capsys):
    check_positions_fed("ok", sum(40 + i for i in range(100)), 40 + 99, 40, 100)
    assert "✔ ok" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="never fed back"):
        check_positions_fed("x", 100 * (40 + 100), 139, 40, 100)
    with pytest.raises(CheckFailed, match="sequence grows"):
        check_positions_fed("x", 100 * 40, 139, 40, 100)
    with pytest.raises(CheckFailed, match="with_cache is 100.*whole prompt"):
        check_positions_fed("x", sum(40 + i for i in range(100)), 100, 40, 100)
    with pytest.raises(CheckFailed, match="whole number"):
        check_positions_fed("x", 1.5, 139, 40, 100)


def test_check_cache_mib_names_the_missing_factor(capsys):
    config = LlamaConfig(num_hidden_layers=32, hidden_size=960, num_attention_heads=15, num_key_value_heads=5)
    right = 32 * 2 * 5 * 64 * 2048 * 2 * 4 / 2**20
    check_cache_mib("ok", right, config, 2048, batch_size=4, dtype=torch.float16)
    assert "✔ ok" in capsys.readouterr().out
    for wrong, match in [(right / 2, "keys and values"), (right * 3, "query heads"), (right / 4, "batch"),
                         (right * 2, "2 bytes, not 4"), (right * 2**20, "bytes: divide"), (right + 1, "layers x 2")]:
        with pytest.raises(CheckFailed, match=match):
            check_cache_mib("x", wrong, config, 2048, batch_size=4, dtype=torch.float16)


def test_check_cached_loop_sees_a_cache_fed_twice(tiny_llama):
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        out = tiny_llama(ids, use_cache=True)
        cache, next_id = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sequence = torch.cat([ids, next_id], dim=-1)
        for _ in range(2):
            out = tiny_llama(next_id, past_key_values=cache, use_cache=True)
            next_id = out.logits[:, -1:].argmax(-1)
            sequence = torch.cat([sequence, next_id], dim=-1)
    from workshop_utils.generation import greedy_generate

    class Tok:
        def convert_ids_to_tokens(self, i):
            return f"t{i}"

    expected = greedy_generate(tiny_llama, ids, 3, eos_token_id=[])
    check_cached_loop("ok", sequence, cache, expected, Tok())
    with pytest.raises(CheckFailed, match="position 5 differs"):
        check_cached_loop("x", sequence, cache, torch.cat([expected[:, :5], expected[:, 5:] + 1], dim=-1), Tok())
    with torch.inference_mode():
        tiny_llama(sequence, past_key_values=cache, use_cache=True)  # the whole sequence fed again
    with pytest.raises(CheckFailed, match="feed only the newest token"):
        check_cached_loop("x", sequence, cache, expected, Tok())
    with pytest.raises(CheckFailed, match="pass the same"):
        check_cached_loop("x", sequence, _filled_cache(tiny_llama, 2), expected, Tok())
