"""Every checker passes its solution, fails the stub, rejects plausible wrong answers with the right message, and never
prints the solution in its hints.

Each exercise has an entry in EXERCISES: the checker, a solution, wrong answers with a fragment of the message each
must get, and the solution's key expressions, which no hint may contain (compared without whitespace).
"""
import functools
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ftlab.checks as checks


class Entry(NamedTuple):
    checker: Callable
    solution: Callable
    wrong: list  # [(wrong answer, fragment of its message)]
    keys: list  # expressions of the solution that no output may contain


# ---- solutions and wrong answers, notebook by notebook ----------------------------------------------------------

def adamw_bytes(n):
    return 16 * n


def training_bytes(n, dtype, optimizer):
    states = {"sgd": 0, "momentum": 1, "adamw": 2}
    return n * torch.tensor([], dtype=dtype).element_size() * (2 + states[optimizer])


def new_head(model, num_classes):
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def head_512(model, num_classes):
    model.fc = torch.nn.Linear(512, num_classes)
    return model


def frozen_head(model, num_classes):
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes).requires_grad_(False)
    return model


def head_unfreezing_everything(model, num_classes):
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model.requires_grad_(True)


def head_from_load_resnet(model, num_classes):
    from ftlab.zoo import load_resnet

    return load_resnet("glyphs", num_classes=num_classes)


def discriminative_lrs(lr, num_groups, factor):
    return [lr / factor ** (num_groups - 1 - k) for k in range(num_groups)]


def discriminative_from_ftlab(lr, num_groups, factor):
    from ftlab.methods.freeze import discriminative_param_groups

    model = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(num_groups)])
    groups = {str(k): [str(k)] for k in range(num_groups)}
    return [g["lr"] for g in discriminative_param_groups(model, lr, factor, groups=groups)]


def discriminative_factor(ratio, num_groups):
    return ratio ** (1 / (num_groups - 1))


def adapter_forward(h, W_down, b_down, W_up, b_up):
    z = torch.relu(h @ W_down.T + b_down)
    return h + z @ W_up.T + b_up


def adapter_init(d, b):
    W_down = torch.randn(b, d) / math.sqrt(d)
    return W_down, torch.zeros(b), torch.zeros(d, b), torch.zeros(d)


def adapter_init_bug(d, b):  # the broken version of the exercise: the zeros in the down projection
    return torch.zeros(b, d), torch.zeros(b), torch.randn(d, b) * 0.01, torch.zeros(d)


def lora_forward(x, W, b, A, B, alpha, r):
    return x @ W.T + b + (alpha / r) * ((x @ A.T) @ B.T)


def lora_merged(x, W, b, A, B, alpha, r):
    return x @ (W + (alpha / r) * B @ A).T + b


def lora_detached(x, W, b, A, B, alpha, r):
    return x @ W.T + b + (alpha / r) * ((x @ A.detach().T) @ B.detach().T)


def lora_in_place(x, W, b, A, B, alpha, r):
    W += (alpha / r) * (B @ A).detach()
    return x @ W.T + b


def lora_init(in_features, out_features, r):
    return torch.randn(r, in_features) / math.sqrt(in_features), torch.zeros(out_features, r)


def nearest_code_index(x, code):
    return (x[:, None] - code[None, :]).abs().argmin(dim=1)


def nearest_assuming_sorted(x, code):
    return torch.bucketize(x, (code[:-1] + code[1:]) / 2)


def quantize_block(block, code):
    absmax = block.abs().max()
    scaled = block / absmax if absmax > 0 else block
    return nearest_code_index(scaled, code), absmax


def quantize_block_max(block, code):
    absmax = block.max()
    return nearest_code_index(block / absmax, code), absmax


def quantize_block_unguarded(block, code):
    absmax = block.abs().max()
    return nearest_code_index(block / absmax, code), absmax


def prepend_virtual_tokens(inputs_embeds, prompt, attention_mask, labels):
    B, P = inputs_embeds.shape[0], prompt.shape[0]
    embeds = torch.cat([prompt.expand(B, -1, -1), inputs_embeds], dim=1)
    mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
    return embeds, mask, torch.cat([labels.new_full((B, P), -100), labels], dim=1)


def prepend_detached(inputs_embeds, prompt, attention_mask, labels):
    return prepend_virtual_tokens(inputs_embeds, prompt.detach(), attention_mask, labels)


def prepend_labels_zero(inputs_embeds, prompt, attention_mask, labels):
    embeds, mask, _ = prepend_virtual_tokens(inputs_embeds, prompt, attention_mask, labels)
    return embeds, mask, torch.cat([labels.new_zeros(labels.shape[0], prompt.shape[0]), labels], dim=1)


def loha_delta(w1_a, w1_b, w2_a, w2_b, scaling):
    return scaling * (w1_a @ w1_b) * (w2_a @ w2_b)


def max_rank(method, out_features, in_features, r, factor):
    if method == "lora":
        return min(r, out_features, in_features)
    if method == "loha":
        return min(r * r, out_features, in_features)
    return factor * min(r, out_features // factor, in_features // factor)


def temperature_probabilities(sizes, T):
    weights = {task: n ** (1 / T) for task, n in sizes.items()}
    total = sum(weights.values())
    return {task: w / total for task, w in weights.items()}


def temperature_for_share(n_small, n_big, share):
    return math.log(n_small / n_big) / math.log(share / (1 - share))


def forgetting_from(R):
    return R[:-1, :-1].max(axis=0) - R[-1, :-1]


def ewc_penalty(params, anchors, fisher, ewc_lambda):
    return ewc_lambda * sum((fisher[k] * (params[k] - anchors[k]) ** 2).sum() for k in params)


def ewc_without_fisher(params, anchors, fisher, ewc_lambda):  # the broken version of the exercise
    return ewc_lambda * sum(((params[k] - anchors[k]) ** 2).sum() for k in params)


def sft_labels(prompt_ids, response_ids, width):
    return [-100] * len(prompt_ids) + list(response_ids) + [-100] * (width - len(prompt_ids) - len(response_ids))


def sft_labels_by_value(prompt_ids, response_ids, width):  # the broken version of the exercise
    ids = prompt_ids + response_ids
    return [-100 if t in prompt_ids else t for t in ids] + [-100] * (width - len(ids))


def gae(rewards, values, gamma, lam):
    advantages = torch.zeros_like(rewards)
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(len(rewards))):
        next_advantage = rewards[t] + gamma * next_value - values[t] + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def gae_forwards(rewards, values, gamma, lam):
    advantages = torch.zeros_like(rewards)
    previous = 0.0
    for t in range(len(rewards)):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        previous = rewards[t] + gamma * next_value - values[t] + gamma * lam * previous
        advantages[t] = previous
    return advantages, advantages + values


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def dpo_swapped(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):  # the broken version
    margin = (policy_chosen - ref_rejected) - (policy_rejected - ref_chosen)
    return -F.logsigmoid(beta * margin).mean()


def dpo_unstable(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -torch.log(torch.sigmoid(beta * margin)).mean()


def dpo_from_ftlab(*args):
    from ftlab.align.dpo import dpo_loss as reference

    return reference(*args)[0]


def step_memory(trainable, total):
    return {"weights": 4 * total, "gradients": 4 * trainable, "optimizer_state": 8 * trainable}


def lr_range(num_steps, start_lr, end_lr):
    return [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]


def early_stopping(val_losses, patience):
    best, wait = 0, 0
    for i in range(1, len(val_losses)):
        if val_losses[i] < val_losses[best]:
            best, wait = i, 0
        else:
            wait += 1
            if wait == patience:
                return i, best
    return len(val_losses) - 1, best


def early_stopping_ties(val_losses, patience):
    best, wait = 0, 0
    for i in range(1, len(val_losses)):
        if val_losses[i] <= val_losses[best]:
            best, wait = i, 0
        else:
            wait += 1
            if wait == patience:
                return i, best
    return len(val_losses) - 1, best


def mixed_precision_bytes(trainable, frozen):
    return 16 * trainable + 2 * frozen


def qlora_bits(block_size, stats_block_size, double_quant):
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * stats_block_size)
    return 4 + 32 / block_size


def accumulation_losses(token_losses):
    total = sum(len(losses) for losses in token_losses)
    return [losses.sum() / total for losses in token_losses]


def accumulation_mean_over_k(token_losses):  # the broken version of the exercise
    return [losses.mean() / len(token_losses) for losses in token_losses]


def normalise(text):
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def squad_f1(prediction, truth):
    pred, gold = normalise(prediction), normalise(truth)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_f1_sets(prediction, truth):
    pred, gold = set(normalise(prediction)), set(normalise(truth))
    if not pred or not gold:
        return float(pred == gold)
    common = len(pred & gold)
    return 0.0 if common == 0 else 2 * common / (len(pred) + len(gold))


def squad_f1_set_common(prediction, truth):
    """Common words counted as a set, divided by the token counts: 0.5 for ("paris paris", "paris paris")."""
    pred, gold = normalise(prediction), normalise(truth)
    if not pred or not gold:
        return float(pred == gold)
    common = len(set(pred) & set(gold))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def iou(boxes_a, boxes_b):
    w = (torch.minimum(boxes_a[:, 2], boxes_b[:, 2]) - torch.maximum(boxes_a[:, 0], boxes_b[:, 0])).clamp(min=0)
    h = (torch.minimum(boxes_a[:, 3], boxes_b[:, 3]) - torch.maximum(boxes_a[:, 1], boxes_b[:, 1])).clamp(min=0)
    inter = w * h
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / (area_a + area_b - inter)


def iou_unclamped(boxes_a, boxes_b):
    w = torch.minimum(boxes_a[:, 2], boxes_b[:, 2]) - torch.maximum(boxes_a[:, 0], boxes_b[:, 0])
    h = torch.minimum(boxes_a[:, 3], boxes_b[:, 3]) - torch.maximum(boxes_a[:, 1], boxes_b[:, 1])
    inter = w * h
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / (area_a + area_b - inter)


def iou_double_union(boxes_a, boxes_b):
    inter = iou(boxes_a, boxes_b) * 0 + (
        (torch.minimum(boxes_a[:, 2], boxes_b[:, 2]) - torch.maximum(boxes_a[:, 0], boxes_b[:, 0])).clamp(min=0) *
        (torch.minimum(boxes_a[:, 3], boxes_b[:, 3]) - torch.maximum(boxes_a[:, 1], boxes_b[:, 1])).clamp(min=0))
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / (area_a + area_b)


def best_span(start_logits, end_logits, max_answer_length):
    T = len(start_logits)
    scores = start_logits[:, None] + end_logits[None, :]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = scores.masked_fill((j < i) | (j - i >= max_answer_length), float("-inf"))
    flat = scores.argmax().item()
    return flat // T, flat % T


def best_span_too_long(start_logits, end_logits, max_answer_length):
    return best_span(start_logits, end_logits, len(start_logits))


def constant(value):
    return lambda *args: value


EXERCISES = {
    "adamw_bytes_per_parameter": Entry(
        checks.check_adamw_bytes_per_parameter, adamw_bytes,
        [(constant(16000), "both give 16,000"), (lambda n: 12 * n, "three of the four"),
         (lambda n: 4 * n, "only the weights"), (lambda n: 16.0 * n, "whole number")],
        ["16 * n", "n * 16"]),
    "training_bytes": Entry(
        checks.check_training_bytes, training_bytes,
        [(constant(16000), "expected"), (lambda n, dtype, opt: 16 * n, "float32 figure"),
         (lambda n, dtype, opt: training_bytes(n, dtype, "adamw"), "AdamW's figure"),
         (lambda n, dtype, opt: 8 * training_bytes(n, dtype, opt), "bits, not bytes")],
        ["'sgd': 0", '"sgd": 0', "(2 + states[optimizer])"]),
    "new_head": Entry(
        checks.check_new_head, new_head,
        [(head_512, "takes 512 features"), (frozen_head, "frozen"), (constant(None), "expected the model back"),
         (lambda model, k: model, "52 outputs"), (head_unfreezing_everything, "requires_grad flags"),
         (head_from_load_resnet, "write it yourself")],
        ["Linear(model.fc.in_features, num_classes)"]),
    "discriminative_lrs": Entry(
        checks.check_discriminative_lrs, discriminative_lrs,
        [(lambda lr, G, f: discriminative_lrs(lr, G, f)[::-1], "reversed"),
         (lambda lr, G, f: [lr / f ** (G - k) for k in range(G)], "too small"), (constant([1e-3] * 6), "expected"),
         (discriminative_from_ftlab, "write it yourself")],
        ["factor ** (num_groups - 1 - k)", "factor ** (G - 1 - k)"]),
    "discriminative_factor": Entry(
        checks.check_discriminative_factor, discriminative_factor,
        [(lambda ratio, G: ratio ** (1 / G), "G-1 steps"), (lambda ratio, G: ratio / (G - 1), "multiple"),
         (constant(2.6), "expected")],
        ["** (1 / (num_groups - 1))", "(1/(G-1))"]),
    "adapter_forward": Entry(
        checks.check_adapter_forward, adapter_forward,
        [(lambda h, Wd, bd, Wu, bu: torch.relu(h @ Wd.T + bd) @ Wu.T + bu, "residual connection is missing"),
         (lambda h, Wd, bd, Wu, bu: h + (h @ Wd.T + bd) @ Wu.T + bu, "non-linearity is missing"),
         (lambda h, Wd, bd, Wu, bu: h + torch.relu(h @ Wd.T + bd) @ Wu.T, "b_up is missing"),
         (lambda h, Wd, bd, Wu, bu: h + torch.relu(h @ Wd.detach().T + bd) @ Wu.T + bu, "gradient of W_down"),
         (lambda h, Wd, bd, Wu, bu: h + torch.relu(h @ Wd + bd) @ Wu + bu, "raised")],
        ["h @ W_down.T + b_down", "@ W_up.T + b_up"]),
    "adapter_init": Entry(
        checks.check_adapter_init, adapter_init,
        [(adapter_init_bug, "have not moved"),
         (lambda d, b: tuple(torch.zeros(s) for s in ((b, d), (b,), (d, b), (d,))), "have not moved"),
         (lambda d, b: (torch.randn(b, d), torch.zeros(b), torch.randn(d, b), torch.zeros(d)), "identity"),
         (lambda d, b: (torch.full((b, d), 0.01), torch.zeros(b), torch.zeros(d, b), torch.zeros(d)), "copies"),
         (lambda d, b: (torch.randn(d, b), torch.zeros(b), torch.zeros(b, d), torch.zeros(d)), "shape")],
        ["W_up = torch.zeros", "torch.zeros(d, b)"]),
    "lora_forward": Entry(
        checks.check_lora_forward, lora_forward,
        [(lora_merged, "builds a tensor"), (lora_detached, "gradient of A is missing"), (lora_in_place, "in place"),
         (lambda x, W, b, A, B, alpha, r: x @ W.T + b + ((x @ A.T) @ B.T), "scaling alpha / r is missing"),
         (lambda x, W, b, A, B, alpha, r: x @ W.T + b, "base layer alone"), (constant(torch.zeros(1)), "shape"),
         (lambda x, W, b, A, B, alpha, r: x @ W.T + b + (alpha / r) * ((x @ B) @ A), "raised")],
        ["(x @ A.T) @ B.T", "x @ W.T + b"]),
    "lora_init": Entry(
        checks.check_lora_init, lora_init,
        [(lambda i, o, r: (torch.randn(r, i), torch.randn(o, r)), "B is not zero"),
         (lambda i, o, r: (torch.zeros(r, i), torch.randn(o, r)), "put the zero in B"),
         (lambda i, o, r: (torch.zeros(r, i), torch.zeros(o, r)), "rank 0"),
         (lambda i, o, r: (torch.randn(i, r), torch.zeros(r, o)), "expected A"),
         (lambda i, o, r: (torch.eye(r, i), torch.zeros(o, r)), "whatever the random seed"),
         (lambda i, o, r: (torch.randint(1, 5, (r, i)), torch.zeros(o, r, dtype=torch.int64)), "never receive")],
        ["zeros(out_features, r)", "torch.zeros(out"]),
    "nf4_lookup": Entry(
        checks.check_nf4_lookup, nearest_code_index,
        [(lambda x, code: code[nearest_code_index(x, code)], "code values, not their indices"),
         (nearest_assuming_sorted, "unsorted"), (lambda x, code: (x[:, None] - code[None, :]).argmin(dim=1), "sign"),
         (lambda x, code: torch.zeros(len(x), dtype=torch.long), "indices are not"),
         (lambda x, code: __import__("ftlab.methods.nf4").methods.nf4.nearest_code(x, code), "write it yourself")],
        [".abs().argmin", "argmin(dim=1)"]),
    "quantize_block": Entry(
        checks.check_quantize_block, quantize_block,
        [(quantize_block_max, "largest value"), (quantize_block_unguarded, "NaN"),
         (lambda block, code: (block, block.abs().max()), "integer indices"),
         (lambda block, code: (nearest_code_index(block, code), block.abs().max()), "indices differ"),
         (lambda block, code: quantize_block(block, torch.tensor(checks.NF4_LEVELS)), "evenly spaced")],
        ["block.abs().max()"]),
    "prepend_virtual_tokens": Entry(
        checks.check_prepend_virtual_tokens, prepend_virtual_tokens,
        [(prepend_detached, "no gradient reaches the prompt"), (prepend_labels_zero, "virtual positions get labels"),
         (lambda e, p, m, l: ((torch.cat([e, p.expand(e.shape[0], -1, -1)], 1),)
                              + prepend_virtual_tokens(e, p, m, l)[1:]), "after the tokens"),
         (lambda e, p, m, l: prepend_virtual_tokens(e, p, m, l)[:2] + (l,), "labels have shape")],
        ["prompt.expand(B, -1, -1)", "new_full((B, P), -100)"]),
    "loha_delta": Entry(
        checks.check_loha_delta, loha_delta,
        [(lambda a, b, c, d, s: (a @ b) * (c @ d), "scaling is missing"),
         (lambda a, b, c, d, s: s * (a @ b + c @ d), "adds the two products"),
         (lambda a, b, c, d, s: s * (a @ b) @ (c @ d), "raised"),
         (lambda a, b, c, d, s: s * (a @ b).T * (c @ d).T, "shape")],
        ["(w1_a @ w1_b) * (w2_a @ w2_b)"]),
    "max_rank": Entry(
        checks.check_max_rank, max_rank,
        [(lambda m, o, i, r, f: {"lora": r, "loha": r * r, "lokr": f * r}[m], "cannot have a rank above"),
         (lambda m, o, i, r, f: {"lora": min(r, o, i), "loha": min(2 * r, o, i), "lokr": f * min(r, o // f, i // f)}[m],
          "element by element"), (constant(8), "expected")],
        ["min(r * r, out", "min(r*r"]),
    "temperature_sampling": Entry(
        checks.check_temperature_sampling, temperature_probabilities,
        [(lambda sizes, T: temperature_probabilities(sizes, 1.0), "T is ignored"),
         (lambda sizes, T: {t: 1 / len(sizes) for t in sizes}, "round-robin"),
         (lambda sizes, T: temperature_probabilities(sizes, 1 / T), "upside down"),
         (lambda sizes, T: {t: n ** (1 / T) for t, n in sizes.items()}, "sum to"),
         (lambda sizes, T: __import__("ftlab.multitask").multitask.task_probabilities(sizes, "temperature", T),
          "write it yourself")],
        ["n ** (1 / T)", "** (1.0 / T)"]),
    "temperature_for_share": Entry(
        checks.check_temperature_for_share, temperature_for_share,
        [(lambda a, b, p: -temperature_for_share(a, b, p), "negative"),
         (lambda a, b, p: 1 / temperature_for_share(a, b, p), "1/T"), (constant(3.0), "expected")],
        ["log(share / (1 - share))"]),
    "forgetting": Entry(
        checks.check_forgetting, forgetting_from,
        [(lambda R: [R[j, j] - R[-1, j] for j in range(len(R) - 1)], "R[j, j]"),
         (lambda R: R[:, :-1].max(axis=0) - R[-1, :-1], "includes the last row"),
         (lambda R: -forgetting_from(R), "sign is flipped"), (constant([0.0]), "expected"),
         (lambda R: __import__("ftlab.continual").continual.forgetting(R), "write it yourself")],
        ["R[:-1, :-1].max(axis=0)"]),
    "ewc_penalty": Entry(
        checks.check_ewc_penalty, ewc_penalty,
        [(ewc_without_fisher, "Fisher weighting is missing"),
         (lambda p, a, f, lam: ewc_penalty(p, a, f, lam) / 2, "no 1/2"),
         (lambda p, a, f, lam: ewc_penalty(p, a, f, lam).item(), "torch tensor"),
         (lambda p, a, f, lam: ewc_penalty(p, a, f, lam).detach(), "no gradient"),
         (constant(torch.tensor(0.0)), "expected")],
        ["fisher[k] * (params[k] - anchors[k]) ** 2", "fisher["]),
    "sft_labels": Entry(
        checks.check_sft_labels, sft_labels,
        [(sft_labels_by_value, "occur in the prompt are masked"),
         (lambda p, r, w: p + r + [-100] * (w - len(p) - len(r)), "prompt tokens are labelled"),
         (lambda p, r, w: [-100] * (len(p) - 1) + r + [-100] * (w - len(p) - len(r) + 1), "shifted"),
         (lambda p, r, w: [-100] * len(p) + r + [1] * (w - len(p) - len(r)), "padding positions"),
         (lambda p, r, w: [-100] * w, "you give")],
        ["[-100] * len(prompt_ids)"]),
    "gae": Entry(
        checks.check_gae, gae,
        [(lambda r, v, g, l: (r + g * torch.cat([v[1:], v.new_zeros(1)]) - v,) * 2, "one-step TD errors"),
         (gae_forwards, "runs forwards"), (lambda r, v, g, l: gae(r, v, g, 1.0), "lam is missing"),
         (lambda r, v, g, l: (gae(r, v, g, l)[0],) * 2, "returns equal the advantages"),
         (lambda r, v, g, l: (None, None), "two tensors"),
         (lambda r, v, g, l: tuple(t[0] for t in __import__("ftlab.align.rlhf").align.rlhf.gae(
             r[None], v[None], torch.ones(1, len(r)), g, l)), "write it yourself")],
        ["gamma * lam * next_advantage", "advantages + values"]),
    "dpo_loss": Entry(
        checks.check_dpo_loss, dpo_loss,
        [(dpo_swapped, "swapped between chosen and rejected"), (dpo_unstable, "underflows"),
         (lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(), "reference model is missing"),
         (lambda pc, pr, rc, rr, beta: dpo_loss(pc, pr, rc, rr, beta) * len(pc), "sum over pairs"),
         (dpo_from_ftlab, "write it yourself"), (constant(torch.tensor(0.6931)), "expected")],
        ["(policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)", "-F.logsigmoid(beta * margin)"]),
    "step_memory": Entry(
        checks.check_step_memory, step_memory,
        [(lambda t, T: {"weights": 4 * t, "gradients": 4 * t, "optimizer_state": 8 * t}, "frozen weights"),
         (lambda t, T: {"weights": 4 * T, "gradients": 4 * t, "optimizer_state": 4 * t}, "two moments"),
         (constant({"weights": 0, "gradients": 0, "optimizer_state": 0}), "expected")],
        ["4 * total", "8 * trainable"]),
    "lr_range": Entry(
        checks.check_lr_range, lr_range,
        [(lambda n, a, b: [a + (b - a) * i / (n - 1) for i in range(n)], "linearly"),
         (lambda n, a, b: [a * (b / a) ** (i / n) for i in range(n)], "last rate"),
         (lambda n, a, b: lr_range(n, b, a), "down to start_lr"), (constant([1e-3] * 100), "expected")],
        ["(i / (num_steps - 1))"]),
    "early_stopping": Entry(
        checks.check_early_stopping, early_stopping,
        [(lambda L, p: (len(L) - 1, min(range(len(L)), key=L.__getitem__)), "cannot know"),
         (early_stopping_ties, "equal losses"), (lambda L, p: early_stopping(L, p + 1), "stops at"),
         (constant((0, 0)), "stops at")],
        ["wait == patience", "wait >= patience"]),
    "mixed_precision_bytes": Entry(
        checks.check_mixed_precision_bytes, mixed_precision_bytes,
        [(lambda t, f: 16 * (t + f), "expected 2,000"), (lambda t, f: 16 * t + 4 * f, "2 bytes"),
         (lambda t, f: 12 * t + 2 * f, "16-bit weight and gradient"), (constant(16000), "expected")],
        ["16 * trainable + 2 * frozen"]),
    "qlora_bits": Entry(
        checks.check_qlora_bits, qlora_bits,
        [(lambda b, s, d: 4 + 32 / b, "ignores double quantisation"),
         (lambda b, s, d: qlora_bits(b, s, d) / 8, "bytes"),
         (lambda b, s, d: 4 + 8 / b if d else 4 + 32 / b, "scale"), (constant(4.127), "expected")],
        ["32 / (block_size * stats_block_size)"]),
    "accumulation_losses": Entry(
        checks.check_accumulation_losses, accumulation_losses,
        [(accumulation_mean_over_k, "same number of tokens"), (lambda L: [t.mean() for t in L], "k times too large"),
         (lambda L: [t.sum() for t in L], "not divided"),
         (lambda L: [torch.cat(L).mean() / len(L)] * len(L), "all of them at once"),
         (lambda L: [t.sum().item() / sum(map(len, L)) for t in L], "scalar tensor")],
        [".sum() / total"]),
    "squad_f1": Entry(
        checks.check_squad_f1, squad_f1,
        [(squad_f1_sets, "repeated words"), (squad_f1_set_common, "repeated words"),
         (lambda p, t: float(normalise(p) == normalise(t)), "exact match"),
         (lambda p, t: squad_f1(p.lower(), t.lower()) if p != p.lower() else squad_f1(p, t) * 0.5, "gave"),
         (constant(0.5), "gave")],
        ["2 * precision * recall / (precision + recall)"]),
    "iou": Entry(
        checks.check_iou, iou,
        [(iou_unclamped, "negative width"), (iou_double_union, "counts the intersection twice"),
         (constant(torch.ones(6)), "pair")],
        ["inter / (area_a + area_b - inter)"]),
    "best_span": Entry(
        checks.check_best_span, best_span,
        [(lambda s, e, L: (s.argmax().item(), e.argmax().item()), "end before the start"),
         (best_span_too_long, "longer than max_answer_length"),
         (lambda s, e, L: (best_span(s, e, L)[0], best_span(s, e, L)[1] + 1), "inclusive"),
         (constant((0, 0)), "you give")],
        ["(j < i) | (j - i >= max_answer_length)"]),
}

WRONG = [pytest.param(name, fn, fragment, id=f"{name}-{k}")
         for name, entry in EXERCISES.items() for k, (fn, fragment) in enumerate(entry.wrong)]


@pytest.fixture(autouse=True)
def fresh_attempts():
    for entry in EXERCISES.values():
        entry.checker.exercise.attempts = 0


def compact(text: str) -> str:
    return re.sub(r"\s", "", text)


def test_every_checker_has_an_entry():
    checkers = {name for name in dir(checks) if name.startswith("check_")}
    covered = {entry.checker.__name__ for entry in EXERCISES.values()}
    assert checkers == covered, f"checkers without a test entry: {sorted(checkers - covered)}"


@pytest.mark.parametrize("name", EXERCISES)
def test_checker_passes_its_solution(name, capsys):
    assert EXERCISES[name].checker(EXERCISES[name].solution) is True
    assert capsys.readouterr().out == f"[PASS] {EXERCISES[name].checker.exercise.name}\n"


@pytest.mark.parametrize("name", EXERCISES)
def test_checker_fails_the_stub_with_a_reminder(name, capsys):
    def stub(*args):
        raise NotImplementedError("exercise: write your solution here")

    assert EXERCISES[name].checker(stub) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and "not written yet" in out


@pytest.mark.parametrize("name", EXERCISES)
def test_checker_rejects_at_least_two_wrong_answers(name):
    assert len(EXERCISES[name].wrong) >= 2


@pytest.mark.parametrize("name, fn, fragment", WRONG)
def test_checker_rejects_a_wrong_answer_with_its_own_message(name, fn, fragment, capsys):
    assert EXERCISES[name].checker(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and fragment in out, out


@pytest.mark.parametrize("name", EXERCISES)
def test_five_failed_attempts_never_print_the_solution(name, capsys):
    entry = EXERCISES[name]
    for wrong, _ in entry.wrong:
        for _ in range(5):
            entry.checker(wrong)
        out = compact(capsys.readouterr().out)
        assert "sketch:" in out
        for key in entry.keys:
            assert compact(key) not in out, f"the hints print the solution's {key!r}"


@pytest.mark.parametrize("name", EXERCISES)
def test_hints_graduate_and_the_count_resets_on_success(name, capsys):
    entry = EXERCISES[name]
    wrong = entry.wrong[0][0]
    outputs = []
    for _ in range(3):
        entry.checker(wrong)
        outputs.append(capsys.readouterr().out)
    first, second, third = outputs
    assert "(attempt 1)" in first and "where to look:" not in first and "sketch:" not in first
    assert "(attempt 2)" in second and "where to look:" in second and "sketch:" not in second
    assert "(attempt 3)" in third and "where to look:" in third and "sketch:" in third
    assert entry.checker.exercise.attempts == 3
    entry.checker(entry.solution)
    assert entry.checker.exercise.attempts == 0
    entry.checker(wrong)
    assert "(attempt 1)" in capsys.readouterr().out


def test_attempt_counts_are_kept_per_exercise(capsys):
    checks.check_dpo_loss(dpo_swapped)
    checks.check_dpo_loss(dpo_swapped)
    checks.check_gae(gae_forwards)
    assert checks.check_dpo_loss.exercise.attempts == 2 and checks.check_gae.exercise.attempts == 1


def test_passing_a_partial_of_the_reference_is_refused(capsys):
    from ftlab.align.dpo import dpo_loss as reference

    assert checks.check_dpo_loss(functools.partial(reference)) is False
    assert "ftlab's own function" in capsys.readouterr().out


def test_a_reference_kept_in_a_default_argument_is_refused(capsys):
    from ftlab.continual import forgetting

    def sneaky(R, _reference=forgetting):
        return _reference(R)

    assert checks.check_forgetting(sneaky) is False
    assert "ftlab's own function" in capsys.readouterr().out


def test_the_forgetting_checker_accepts_a_list_of_floats():
    assert checks.check_forgetting(lambda R: [float(v) for v in forgetting_from(np.asarray(R))]) is True


def test_step_memory_accepts_whole_float_byte_counts_and_refuses_fractions(capsys):
    """4.0 * total is a right answer written with floats; 4 * total + 0.5 is not a byte count."""
    as_floats = {name: float(value) for name, value in step_memory(1_026, 11_177_538).items()}
    checks.check_step_memory(lambda t, T: {k: float(v) for k, v in step_memory(t, T).items()})
    assert capsys.readouterr().out.startswith("[PASS]") and as_floats["weights"] == 4.0 * 11_177_538
    checks.check_step_memory(lambda t, T: {**step_memory(t, T), "weights": 4 * T + 0.5})
    assert "whole numbers" in capsys.readouterr().out
