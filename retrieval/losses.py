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
    return _BestInterest.apply(query, cand)


class _BestInterest(torch.autograd.Function):
    """max over k of query[:, k] @ cand.T, one interest at a time: the [R, K, C] scores are never held, nor, in
    backward, the [R, K, C] gradient that a max over that tensor scatters into (filling and scattering it cost
    more than the products). Each score's gradient goes to one interest, even where interests tie."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # backward runs under forward's autocast: its products match dtypes
    def forward(ctx, query: Tensor, cand: Tensor) -> Tensor:
        best = query[:, 0] @ cand.T  # [R, C]
        # [R, C] the best interest so far, as floats: comparisons written into float tensors and max/mul stay on
        # the vectorised float path, where bool masks (masked_fill, where) take several times longer.
        which, won = torch.zeros_like(best), torch.empty_like(best)
        for k in range(1, query.shape[1]):
            s = query[:, k] @ cand.T
            torch.gt(s, best, out=won)  # 1.0 where interest k beats every earlier one
            torch.maximum(which, won.mul_(k), out=which)  # k exceeds every earlier index
            torch.maximum(best, s, out=best)
        ctx.save_for_backward(query, cand, which)
        return best

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        query, cand, which = ctx.saved_tensors
        grad = grad.to(query.dtype)  # a bf16 product's gradient, outside autocast (Lightning's bf16-mixed on a CPU)
        grad_query, grad_cand = torch.empty_like(query), torch.zeros_like(cand)
        g = torch.empty_like(grad)
        for k in range(query.shape[1]):
            torch.eq(which, k, out=g).mul_(grad)  # [R, C] the gradient of the entries interest k won
            grad_query[:, k] = g @ cand
            grad_cand.addmm_(g.T, query[:, k])
        return grad_query, grad_cand


@dataclass(frozen=True)
class Candidates:
    """One group of softmax columns: in-batch candidates (the batch's positives) or sampled negatives.

    emb: [C, D] item embeddings (None where only the ids are read: ``column_bias``); item: [C] item key of each;
    log_q: [C] log expected count of each in a batch under its sampler (None = no logQ correction); user: [C] the
    user whose positive each in-batch candidate is (None for sampled negatives).
    """

    emb: Tensor | None
    item: Tensor
    log_q: Tensor | None = None
    user: Tensor | None = None


def softmax_logits(query: Tensor, target: Tensor, query_user: Tensor, cand: Candidates,
                   neg: Candidates | None = None) -> Tensor:
    """[R, B (+ N)] logits of the sampled softmax over in-batch candidates ``cand`` (B, with ``user`` set) and
    sampled negatives ``neg`` (N), masked columns -inf: the scores plus ``column_bias``.

    query: [R, D] user embeddings (temperature already folded in), or [R, K, D] with K interests (an item's logit
    is its best interest's: ``interest_scores``); target: [R] column of each row's positive among the in-batch
    candidates; query_user: [R] user key of each row.
    """
    emb = cand.emb if neg is None or neg.emb.shape[0] == 0 else torch.cat([cand.emb, neg.emb])  # [B (+ N), D]
    return biased_scores(query, emb, column_bias(target, query_user, cand, neg, emb.dtype))


def biased_scores(query: Tensor, emb: Tensor, bias: Tensor) -> Tensor:
    """[R, C] interest_scores(query, emb) + bias; for one vector per row, bias is the product's starting value
    (addmm): no separate pass over the [R, C] logits, forward or backward. Under autocast the product is bf16, and
    the bias (logQ) is added in its own precision instead of being rounded into the product's."""
    if query.dim() == 2 and not torch.is_autocast_enabled(query.device.type):
        return torch.addmm(bias, query, emb.T)
    return interest_scores(query, emb) + bias


def column_bias(target: Tensor, query_user: Tensor, cand: Candidates, neg: Candidates | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """[R, B (+ N)] what the softmax adds to each row's scores: minus every column's logQ, and -inf where the
    column is masked (rows and arguments as in ``softmax_logits``; ``emb`` is not read).

    It depends on ids and the samplers' estimates alone, so the heads of one step share one (computed without
    gradient: logQ is an estimate, not a parameter).

    logQ: every column's logit is lowered by its log expected count, the positive's too (Yi et al., 2019).
    Masking: a column is dropped for a row when it is the same item as the row's positive (accidental
    hit) or another positive of the same user in the batch, except the row's own target column; and an
    item repeated in the batch keeps one column (its first), because cand.log_q is the chance of an item
    being in the batch, not its count: left in, a popular item would weigh in the denominator as many
    times as it repeats, and the model would learn to rank popular items down. A sampled negative is dropped
    for a row when it is the row's positive or a positive of the row's user anywhere in the batch.
    The masked entries are few per row, so they are found by sorted joins (``matches``), not by [R, B]
    comparisons.
    """
    with torch.no_grad():
        R, B, dev = target.shape[0], cand.item.shape[0], target.device
        N = 0 if neg is None else neg.item.shape[0]
        inf = float("-inf")
        bias = torch.zeros(R, B + N, dtype=dtype, device=dev)
        own = torch.zeros(R, dtype=dtype, device=dev)  # the target column's value: it is never masked
        if cand.log_q is not None:
            bias[:, :B] = -cand.log_q.to(dtype)[None, :]
            own = -cand.log_q.to(dtype)[target]
        pos_item = cand.item[target]  # [R]
        for r, j in (matches(pos_item, cand.item), matches(query_user, cand.user)):
            bias[r, j] = inf  # the same item as the row's positive; another positive of the row's user
        uniq, inverse = torch.unique(cand.item, return_inverse=True)
        cols = torch.arange(B, device=dev)
        first = torch.full((uniq.shape[0],), B, dtype=torch.long, device=dev).scatter_reduce(0, inverse, cols, "amin")
        bias[:, cols[first[inverse] != cols]] = inf  # a repeat of an earlier column
        bias[torch.arange(R, device=dev), target] = own
        if N:
            if neg.log_q is not None:
                bias[:, B:] = -neg.log_q.to(dtype)[None, :]
            for r, n in (matches(pos_item, neg.item), _negatives_of_users_positives(query_user, cand.item,
                                                                                      cand.user, neg.item)):
                bias[r, B + n] = inf
    return bias


def matches(query: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Every pair (r, j) with query[r] == keys[j], by a sort of keys: rows [M], positions [M], in query order."""
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    lo = torch.searchsorted(sorted_keys, query)
    counts = torch.searchsorted(sorted_keys, query, right=True) - lo  # [R] keys equal to each query
    total, dev = int(counts.sum()), query.device
    r = torch.repeat_interleave(torch.arange(query.shape[0], device=dev), counts, output_size=total)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts, output_size=total)
    j = order[torch.repeat_interleave(lo, counts, output_size=total) + torch.arange(total, device=dev) - first]
    return r, j


class _SoftmaxNLL(torch.autograd.Function):
    """Weighted -log softmax(logits)[target] and the rows' log-sum-exp, with a backward that reads the saved
    probabilities: one exp pass over [R, C], where log_softmax takes one forward and one backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, logits: Tensor, target: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
        rows = torch.arange(logits.shape[0], device=logits.device)
        p = torch.softmax(logits, 1)  # [R, C]
        at = logits[rows, target]
        p_t = p[rows, target]
        lse = at - torch.log(p_t)  # [R] exact while the target's probability is a normal float
        low = p_t < torch.finfo(p.dtype).tiny
        if bool(low.any()):
            lse[low] = torch.logsumexp(logits[low], 1)
        ctx.save_for_backward(p, target, coef)
        ctx.mark_non_differentiable(lse)
        return ((lse - at) * coef).sum(), lse

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor, _grad_lse: Tensor) -> tuple[Tensor, None, None]:
        p, target, coef = ctx.saved_tensors
        g = coef * grad  # [R]
        out = p * g[:, None]  # d/dlogits = (softmax - onehot(target)) * coef
        out[torch.arange(p.shape[0], device=p.device), target] -= g
        return out, None, None


def softmax_nll_lse(logits: Tensor, target: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """softmax_nll and logsumexp(logits, 1) [R] (what bonus_nll reads; it carries no gradient)."""
    return _SoftmaxNLL.apply(logits, target, weight / weight.sum().clamp_min(1e-12))


def softmax_nll(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean over rows of -log softmax(logits)[target]: logits [R, C], target [R] columns, weight [R]."""
    return softmax_nll_lse(logits, target, weight)[0]


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


def _negatives_of_users_positives(query_user: Tensor, cand_item: Tensor, cand_user: Tensor,
                                  neg_item: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs (r, n) [M] each where sampled negative n is a positive of row r's user anywhere in the batch (a pair
    repeats when the user has the item as more than one positive).

    A sorted join over the few (negative, candidate) pairs with the same item, then over the rows of each such
    candidate's user, instead of a dense [R, B] @ [B, N] product (a GFLOP per step at batch 1024).
    """
    neg_of_pair, cand_of_pair = matches(neg_item, cand_item)  # [M]
    r, m = matches(query_user, cand_user[cand_of_pair])
    return r, neg_of_pair[m]
