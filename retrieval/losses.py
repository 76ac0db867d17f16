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


def softmax_nll(logits: Tensor, target: Tensor, weight: Tensor, lse: Tensor | None = None) -> Tensor:
    """Weighted mean over rows of -log softmax(logits)[target]: logits [R, C], target [R] columns, weight [R];
    lse: logsumexp(logits, 1) [R] when the caller has it."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    lse = torch.logsumexp(logits, dim=1) if lse is None else lse
    per_row = lse - logits[rows, target]
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def bonus_nll(logits: Tensor, lse: Tensor, target: Tensor, weight: Tensor, at: tuple[Tensor, Tensor],
              bonus: Tensor) -> Tensor:
    """softmax_nll(logits + X, target, weight) for X [R, C] zero but at the entries ``at`` (rows [P], columns [P],
    each entry once), where it is ``bonus`` [P] >= 0; lse: logsumexp(logits, 1) [R].

    Only the P entries are read: lse(logits + X)_r = lse_r + log(1 + sum_j softmax(logits)_rj * expm1(X_rj)),
    the sum over row r's entries, taken in logs (a large bonus would overflow exp). The repeat term's bonus is
    non-zero only where a candidate is in the row's history, a few entries of each [R, B + N] row, so this skips
    the dense pass over every logit, forward and backward, that adding it to all of them costs."""
    r, c = at
    R = logits.shape[0]
    b = bonus.clamp_min(1e-20)  # log(expm1(b)) is -inf at 0, and its gradient there NaN
    t = logits[r, c] - lse[r] + b + torch.log(-torch.expm1(-b))  # [P] log(softmax * expm1(bonus))
    # Per row, logsumexp over {0} and the row's t: the shift m is detached, as in logsumexp's own.
    m = torch.zeros(R, dtype=t.dtype, device=t.device).scatter_reduce(0, r, t.detach(), "amax").clamp_min(0)
    extra = m + torch.log(torch.exp(-m).index_add(0, r, torch.exp(t - m[r])))  # [R]
    hit = c == target[r]
    own = torch.zeros(R, dtype=bonus.dtype, device=bonus.device).index_add(0, r[hit], bonus[hit])  # X[r, target]
    rows = torch.arange(R, device=logits.device)
    per_row = lse + extra - logits[rows, target] - own
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
