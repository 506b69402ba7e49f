"""Greedy generation with transformers itself: the independent reference for engine tests."""

from __future__ import annotations

import torch


def hf_greedy(folder, prompts: list[list[int]], max_new_tokens: int, top_n: int = 5):
    """Per prompt: (generated ids, per-step {token: logprob} of the top ``top_n`` raw-logit log-probs)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    results = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True,
                                 eos_token_id=None, pad_token_id=3)
        tokens = out.sequences[0, len(ids):].tolist()
        steps = []
        for logits in out.logits:
            logprobs = torch.log_softmax(logits[0].float(), dim=-1)
            top = logprobs.topk(top_n)
            steps.append(dict(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
        results.append((tokens, steps))
    return results
