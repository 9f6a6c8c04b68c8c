"""Exercise checks, one module per notebook; import them from here.

`from workshop_utils.checks import check, check_cached_loop` works for every check, so a notebook
never needs to know which module holds one. Each check explains the first difference it finds.
"""

from .core import CheckFailed, check, check_token_ids, check_true, first_difference
from .tokenization import check_token_count, check_reply_cut, check_stream_pieces
from .logits import check_first_correct_position, check_decode_timing
from .generation import check_filter, check_kept_count, check_reproduces_sampling
from .kv_cache import check_positions_fed, check_cache_mib, check_cached_loop
from .chat import check_replies, check_labels, check_shifted_loss
from .cfg import check_cfg_scores, check_negative_prompt, check_padded_rows
from .multimodal import check_spliced_labels, check_expanded_ids, check_derangement
from .bpe import (check_byte_table, check_pre_tokenizer, check_encoder, check_decoder, check_bpe_words,
                  check_merges, check_trained, check_predicted_tokens)
from .forward import check_attention, check_layer_params, check_logits, check_steps_against_generate, difference
from .inside import check_layer0_prediction, check_lens, check_duplicate_scores
from .structured import (check_allowed_sets, check_cached_processor, check_first_forbidden, check_stopping,
                         check_stream_decoder)

__all__ = [
    "CheckFailed",
    "check",
    "check_token_ids",
    "check_true",
    "first_difference",
    "check_token_count",
    "check_reply_cut",
    "check_stream_pieces",
    "check_first_correct_position",
    "check_decode_timing",
    "check_filter",
    "check_kept_count",
    "check_reproduces_sampling",
    "check_positions_fed",
    "check_cache_mib",
    "check_cached_loop",
    "check_replies",
    "check_labels",
    "check_shifted_loss",
    "check_cfg_scores",
    "check_negative_prompt",
    "check_padded_rows",
    "check_spliced_labels",
    "check_expanded_ids",
    "check_derangement",
    "check_byte_table",
    "check_pre_tokenizer",
    "check_encoder",
    "check_decoder",
    "check_bpe_words",
    "check_merges",
    "check_trained",
    "check_predicted_tokens",
    "check_attention",
    "check_layer_params",
    "check_logits",
    "check_steps_against_generate",
    "difference",
    "check_layer0_prediction",
    "check_lens",
    "check_duplicate_scores",
    "check_stopping",
    "check_stream_decoder",
    "check_allowed_sets",
    "check_first_forbidden",
    "check_cached_processor",
]
