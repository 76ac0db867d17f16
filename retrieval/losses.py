"""Sampled softmax with in-batch and sampled negatives, logQ correction and masking. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def interest_scores(query: Tensor, cand: Tensor) -> Tensor:
    """[R, C] inner products of queries [R, D] with candidates [C, D]; a query of K interests [R, K, D] scores
    each candidate by its best-matching interest (what K index searches merged by score return)."""
    if query.dim() == 2:
        return query @ cand.T
    R, K, D = query.shape
    # One 2-D product, and max with indices (its backward is a scatter; amax's compares every entry again).
    return (query.reshape(R * K, D) @ cand.T).view(R, K, -1).max(dim=1).values  # [R, K, C] -> [R, C]


@dataclass(frozen=True)
class Candidates:
    """One group of softmax columns: in-batch candidates (the batch's positives) or sampled negatives.

    emb: [C, D] item embeddings; item: [C] item key of each; log_q: [C] log expected count of each in a batch
    under its sampler (None = no logQ correction); user: [C] the user whose positive each in-batch candidate is
    (None for sampled negatives).
    """

    emb: Tensor
    item: Tensor
    log_q: Tensor | None = None
    user: Tensor | None = None


def softmax_logits(query: Tensor, target: Tensor, query_user: Tensor, cand: Candidates,
                   neg: Candidates | None = None) -> Tensor:
    """[R, B (+ N)] logits of the sampled softmax over in-batch candidates ``cand`` (B, with ``user`` set) and
    sampled negatives ``neg`` (N), masked columns -inf.

    query: [R, D] user embeddings (temperature already folded in), or [R, K, D] with K interests (an item's logit
    is its best interest's: ``interest_scores``); target: [R] column of each row's positive among the in-batch
    candidates; query_user: [R] user key of each row.

    logQ: every column's logit is lowered by its log expected count, the positive's too (Yi et al., 2019).
    Masking: a column is dropped for a row when it is the same item as the row's positive (accidental
    hit) or another positive of the same user in the batch, except the row's own target column; and an
    item repeated in the batch keeps one column (its first), because cand.log_q is the chance of an item
    being in the batch, not its count: left in, a popular item would weigh in the denominator as many
    times as it repeats, and the model would learn to rank popular items down.
    """
    R, B = query.shape[0], cand.emb.shape[0]
    logits = interest_scores(query, cand.emb)  # [R, B]
    if cand.log_q is not None:
        logits = logits - cand.log_q[None, :]
    pos_item = cand.item[target]  # [R]
    own = torch.zeros(R, B, dtype=torch.bool, device=query.device)
    own[torch.arange(R, device=query.device), target] = True
    same_item = cand.item[None, :] == cand.item[:, None]  # [B, B]
    repeat = same_item.to(torch.int8).argmax(0) != torch.arange(B, device=query.device)  # [B] not first occurrence
    drop = ((cand.item[None, :] == pos_item[:, None]) | (cand.user[None, :] == query_user[:, None])
            | repeat[None, :]) & ~own
    logits = logits.masked_fill(drop, float("-inf"))
    if neg is not None and neg.emb.shape[0] > 0:
        nl = interest_scores(query, neg.emb)  # [R, N]
        if neg.log_q is not None:
            nl = nl - neg.log_q[None, :]
        user_pos = _negatives_of_users_positives(query_user, cand.item, cand.user, neg.item)  # [R, N]
        nl = nl.masked_fill(user_pos | (neg.item[None, :] == pos_item[:, None]), float("-inf"))
        logits = torch.cat([logits, nl], dim=1)
    return logits


def softmax_nll(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean over rows of -log softmax(logits)[target]: logits [R, C], target [R] columns, weight [R]."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    per_row = torch.logsumexp(logits, dim=1) - logits[rows, target]
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def _negatives_of_users_positives(query_user: Tensor, cand_item: Tensor, cand_user: Tensor, neg_item: Tensor) -> Tensor:
    """[R, N] True where sampled negative n is a positive of row r's user anywhere in the batch.

    A sorted join over the few (candidate, negative) pairs with the same item, instead of a dense
    [R, B] @ [B, N] product (a GFLOP per step at batch 1024, which dominated the training step).
    """
    R, N = query_user.shape[0], neg_item.shape[0]
    order = torch.argsort(cand_item)
    sorted_items = cand_item[order]
    lo = torch.searchsorted(sorted_items, neg_item)
    counts = torch.searchsorted(sorted_items, neg_item, right=True) - lo  # [N] candidates sharing the item
    out = torch.zeros(R, N, dtype=torch.bool, device=query_user.device)
    total = int(counts.sum())
    if total == 0:
        return out
    neg_of_pair = torch.repeat_interleave(torch.arange(N, device=neg_item.device), counts)  # [M]
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    cand_of_pair = order[torch.repeat_interleave(lo, counts) + torch.arange(total, device=neg_item.device) - first]
    r, m = torch.nonzero(query_user[:, None] == cand_user[cand_of_pair][None, :], as_tuple=True)  # [R, M] -> pairs
    out[r, neg_of_pair[m]] = True
    return out
