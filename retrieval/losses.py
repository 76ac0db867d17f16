"""Sampled softmax with in-batch and sampled negatives, logQ correction and masking. Pure functions."""

from __future__ import annotations

import torch
from torch import Tensor


def sampled_softmax_loss(
    query: Tensor,
    target: Tensor,
    weight: Tensor,
    query_user: Tensor,
    cand: Tensor,
    cand_item: Tensor,
    cand_user: Tensor,
    cand_log_q: Tensor | None = None,
    neg: Tensor | None = None,
    neg_item: Tensor | None = None,
    neg_log_q: Tensor | None = None,
) -> Tensor:
    """Weighted mean over query rows of -log softmax(target) over in-batch candidates and sampled negatives.

    query: [R, D] user embeddings (temperature already folded in); target: [R] column of each row's
    positive among the in-batch candidates; weight: [R] example weights; query_user: [R] user key.
    cand: [B, D] in-batch candidate item embeddings (the batch's positives); cand_item / cand_user: [B]
    item and user key of each; cand_log_q: [B] log expected count of each candidate in a batch.
    neg: [N, D] sampled negatives; neg_item: [N]; neg_log_q: [N] log expected count under their sampler.

    logQ: every column's logit is lowered by its log expected count, the positive's too (Yi et al., 2019).
    Masking: a column is dropped for a row when it is the same item as the row's positive (accidental
    hit) or another positive of the same user in the batch, except the row's own target column; and an
    item repeated in the batch keeps one column (its first), because cand_log_q is the chance of an item
    being in the batch, not its count: left in, a popular item would weigh in the denominator as many
    times as it repeats, and the model would learn to rank popular items down.
    """
    R, B = query.shape[0], cand.shape[0]
    logits = query @ cand.T  # [R, B]
    if cand_log_q is not None:
        logits = logits - cand_log_q[None, :]
    pos_item = cand_item[target]  # [R]
    own = torch.zeros(R, B, dtype=torch.bool, device=query.device)
    own[torch.arange(R, device=query.device), target] = True
    same_item = cand_item[None, :] == cand_item[:, None]  # [B, B]
    repeat = same_item.to(torch.int8).argmax(0) != torch.arange(B, device=query.device)  # [B] not first occurrence
    drop = ((cand_item[None, :] == pos_item[:, None]) | (cand_user[None, :] == query_user[:, None])
            | repeat[None, :]) & ~own
    logits = logits.masked_fill(drop, float("-inf"))
    if neg is not None and neg.shape[0] > 0:
        nl = query @ neg.T  # [R, N]
        if neg_log_q is not None:
            nl = nl - neg_log_q[None, :]
        # Items that are positives of the row's user anywhere in the batch (the row's own positive included).
        same_user = cand_user[None, :] == query_user[:, None]  # [R, B]
        hit = (cand_item[:, None] == neg_item[None, :]).to(query.dtype)  # [B, N]
        user_pos = (same_user.to(query.dtype) @ hit) > 0  # [R, N]
        nl = nl.masked_fill(user_pos | (neg_item[None, :] == pos_item[:, None]), float("-inf"))
        logits = torch.cat([logits, nl], dim=1)
    per_row = torch.logsumexp(logits, dim=1) - logits[torch.arange(R, device=query.device), target]
    total = weight.sum()
    return (per_row * weight).sum() / total.clamp_min(1e-12)
