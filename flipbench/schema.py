"""Column contracts shared by every stage.

``samples.parquet`` holds one row per (task, doc_id, filter). Everything the metrics need is in it, so a
report can be rebuilt from disk without loading a model. Multiple-choice rows keep the raw choice
log-likelihoods and the choice lengths in characters, so any lm-eval scoring rule (``acc``: argmax of the
log-likelihoods, ``acc_norm``: argmax of log-likelihood / characters) can be recomputed per side.
"""

# Identity of a row; pairing joins on these and then checks the hashes agree.
KEY = ["task", "doc_id", "filter"]

# Columns of one side's per-sample frame (output of flipbench.evaluate, before pairing).
SIDE_COLUMNS = {
    "task": "lm-eval task name",
    "group": "sub-group of the task (MMLU subject, synth subject), else the task name",
    "category": "the lm-eval group between the task and its subject (MMLU: stem, humanities, social sciences, other), else ''",
    "doc_id": "lm-eval doc index in the evaluated split",
    "filter": "lm-eval filter name ('none' for multiple choice; e.g. 'strict-match' for GSM8k)",
    "output_type": "'multiple_choice' or 'generate_until'",
    "metric": "the task's headline metric (acc, acc_norm, exact_match)",
    "doc_hash": "lm-eval's sha256 of the document",
    "prompt_hash": "lm-eval's sha256 of the prompt",
    "prompt": "the full prompt text (few-shot context included)",
    "target": "gold: the gold choice index as a string, comma-separated when lm-eval's doc_to_target lists several, "
              "'' when none is among the choices (MC), or the answer string (generative)",
    "choices": "list of choice strings (MC), empty list for generative",
    "choice_len": "list of choice lengths in characters, lm-eval's acc_norm normaliser (MC)",
    "ll": "list of choice log-likelihoods in nats (MC; over the contexts for a multiple-input task), empty for generative",
    "ll_uncond": "list of unconditional choice log-likelihoods (MC tasks scoring acc_mutual_info), else empty",
    "pred": "choice index under the headline metric as a string (MC) or the filtered answer (generative)",
    "correct": "0/1: lm-eval's own logged per-sample value of the headline metric",
    "lm_correct": "JSON {metric: value} of every numeric per-sample metric lm-eval logged for the row",
    "response": "raw generated text before filtering (generative), '' for MC",
}

# Columns of the paired table written as samples.parquet. ``_base``/``_comp`` suffixes mark the side.
SAMPLE_COLUMNS = [
    "task", "group", "category", "doc_id", "filter", "output_type", "metric", "doc_hash", "prompt_hash",
    "prompt", "target", "choices", "choice_len",
    "ll_base", "ll_comp", "ll_uncond_base", "ll_uncond_comp", "pred_base", "pred_comp", "correct_base", "correct_comp",
    "lm_correct_base", "lm_correct_comp",
    "response_base", "response_comp",
    # p_x = softmax of the normalised scores the row's metric predicts with (flipbench.scoring: ll for acc,
    # ll / characters for acc_norm, ll / bytes for acc_bytes, ll - ll_uncond for acc_mutual_info); MC only.
    "p_base", "p_comp",
    # MC: choice-level KL(p_base || p_comp) in nats and Jensen-Shannon distance (base 2).
    # Generative: kl is the token-level KL(base || comp) in nats, mean over the baseline answer's tokens
    # (NaN until computed), js is NaN.
    "kl", "js",
    # p_base top-1 minus top-2 of that same distribution (MC), NaN for generative.
    "margin_base",
    # Generative only (NaN for MC): share of answer tokens where both models' argmax token agrees,
    # and how many answer tokens the token KL averaged over.
    "same_top", "n_tokens",
    # Generative only (empty lists for MC): per answer token of the baseline's answer, the full-vocabulary
    # KL(base || comp) in nats (from a top-k baseline reference: its lower bound) and its upper bound (equal when
    # exact), 1.0 where both argmax tokens agree, and the answer token's log-prob under each side; summary
    # statistics over tokens (flipbench.klstats) are computed from these, without a model.
    "tok_kl", "tok_kl_upper", "tok_same_top", "tok_logp_base", "tok_logp_comp",
    # Generative only (empty lists for MC), per answer token as above: |top-5 of base ∩ top-5 of comp| / 5,
    # KL(comp || base) in nats and the Jensen-Shannon distance (base 2); from a top-k reference the last two are
    # lower bounds and the overlap is NaN when k < 5 (flipbench.tokenkl._compare).
    "tok_top5_overlap", "tok_kl_rev", "tok_js",
    # Generative only (NaN for MC): where the two greedy generations part (flipbench.trajectory): identical
    # response strings (1/0), first divergent token (index in the baseline's answer tokens; NaN when identical),
    # common-prefix share of the longer answer, answer lengths in tokens, comp/base length ratio, the task's
    # max_gen_toks, and 1/0 per side for an answer that used the whole budget (truncated, no stop reached).
    "gen_identical", "first_div_token", "prefix_share", "gen_len_base", "gen_len_comp", "len_ratio",
    "max_gen_toks", "trunc_base", "trunc_comp",
    # Generative with suite.think_end only (else NaN): per side, the reasoning span in the raw generation
    # (flipbench.trajectory): its tokens before the marker (NaN when absent), 1/0 marker present, and 1/0 marker
    # absent with the generation run to max_gen_toks.
    "think_len_base", "think_len_comp", "think_closed_base", "think_closed_comp", "think_cut_base", "think_cut_comp",
    # Generative only (NaN for MC, or where the prompt was not scored): teacher-forced on the prompt's own tokens
    # (prefill; flipbench.tokenkl), tokens scored and their mean KL(base || comp) (lower bound from a top-k reference),
    # mean upper bound, top-1 agreement and top-5 overlap.
    "prefill_n_tokens", "prefill_kl", "prefill_kl_upper", "prefill_top1", "prefill_top5",
]

INVALID = "[invalid]"  # lm-eval's marker for an answer the filter could not extract
