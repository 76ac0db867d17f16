"""User and item towers: plain nn.Modules mapping tower inputs to L2-normalised embeddings per head.

Inputs are dicts of tensors (batch first) built by :class:`retrieval.vocab.TowerVocab` and the history
builder: ``id`` [B] embedding row (0 = no learned id), one entry per feature, and for the user tower
``hist_items`` [B, L] / ``hist_weights`` [B, L], a bag over the item-ID table shared with the item tower, and
``hist_<feature>`` [B, L]: bags of the history items' categorical features over the item tower's tables.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureEmbedder(nn.Module):
    """One vector per feature (embedding, pooled bag or projection), concatenated: [B, n_groups * dim]."""

    def __init__(self, features: list[dict[str, Any]], dim: int):
        super().__init__()
        self.features = [dict(f) for f in features]
        self.tables = nn.ModuleDict()
        self.proj = nn.ModuleDict()
        for f in self.features:
            if f["kind"] in ("categorical", "hashed"):
                self.tables[f["name"]] = nn.Embedding(f["width"], dim, padding_idx=0, sparse=True)
            elif f["kind"] == "multi_hot":
                self.tables[f["name"]] = nn.EmbeddingBag(f["width"], dim, mode="mean", padding_idx=0, sparse=True)
            elif f["kind"] == "dense":
                self.proj[f["name"]] = nn.Linear(f["width"], dim)
        self.continuous = [f["name"] for f in self.features if f["kind"] == "continuous"]
        if self.continuous:
            self.proj["_continuous"] = nn.Linear(len(self.continuous), dim)
        self.out_dim = dim * (len(self.tables) + len(self.proj))

    def forward(self, x: dict[str, Tensor]) -> list[Tensor]:
        out = [self.tables[n](x[n]) for n in self.tables]
        out += [self.proj[n](x[n]) for n in self.proj if n != "_continuous"]
        if self.continuous:
            out.append(self.proj["_continuous"](torch.cat([x[n] for n in self.continuous], dim=1)))
        return out


def _weighted_bag(codes: Tensor, weights: Tensor, table: nn.Embedding) -> Tensor:
    """Weighted mean of table rows: codes, weights [B, L] -> [B, E]; code 0 (padding, missing) weighs nothing."""
    w = weights * (codes > 0)
    bag = F.embedding_bag(codes, table.weight, mode="sum", per_sample_weights=w, sparse=True, padding_idx=0)
    return bag / w.sum(1, keepdim=True).clamp_min(1e-6)


def _full(t: Tensor) -> Tensor:
    """float32 for a half-precision tensor; float32 and float64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class _PooledBags(torch.autograd.Function):
    """InterestPooling's attention and its K pooled bags over T history tables, computed table by table: the T
    [B, L, E] embedding rows are never concatenated into one [B, L, T * E] tensor, and in backward each
    table's gradient is one batched product, [B, L, 2K] @ [B, 2K, E], where autograd through the concatenated
    form wrote two [B, L, T * E] gradients (through the keys and through the pooling), added them and split the
    sum. Those passes over the history are most of a four-interest step on a long history.

    forward(key [K, T * E], bias [B, L] (log history weight, -inf where masked), *embs: T x [B, L, E]) ->
    attention [B, K, L] (0 on a row with nothing to attend to), pooled [B, K, T * E]. Runs in float32 (or 64)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, key: Tensor, bias: Tensor, *embs: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(embs[0].device.type, enabled=False):  # CPU autocast too: bf16 here would mix dtypes
            key, bias, embs = _full(key), _full(bias), [_full(e) for e in embs]
            keys = key.split(embs[0].shape[2], dim=1)  # T x [K, E]
            logits = bias[:, None, :] + sum(k @ e.transpose(1, 2) for k, e in zip(keys, embs, strict=True))  # [B, K, L]
            attn = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # a row masked whole is nan: 0
            pooled = torch.cat([attn @ e for e in embs], dim=2)  # [B, K, T * E]
        ctx.save_for_backward(key, attn, *embs)
        return attn, pooled

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_attn: Tensor | None, g_pooled: Tensor | None):
        key, attn, *embs = ctx.saved_tensors
        e_dim = embs[0].shape[2]
        with torch.autocast(attn.device.type, enabled=False):
            keys = key.split(e_dim, dim=1)
            g_pooled = attn.new_zeros(*attn.shape[:2], key.shape[1]) if g_pooled is None else _full(g_pooled)
            gp = g_pooled.split(e_dim, dim=2)  # T x [B, K, E]
            g = sum(p @ e.transpose(1, 2) for p, e in zip(gp, embs, strict=True))  # [B, K, L] through the pooling
            if g_attn is not None:
                g = g + _full(g_attn)
            g_logits = attn * (g - (attn * g).sum(-1, keepdim=True))  # softmax backward; 0 where attn is 0
            left = torch.cat([g_logits, attn], dim=1).transpose(1, 2)  # [B, L, 2K]
            b = attn.shape[0]
            g_embs = [torch.bmm(left, torch.cat([k.expand(b, -1, -1), p], dim=1))  # [B, L, E], one write each
                      for k, p in zip(keys, gp, strict=True)]
            g_key = torch.cat([(g_logits @ e).sum(0) for e in embs], dim=1) if ctx.needs_input_grad[0] else None
            g_bias = g_logits.sum(1) if ctx.needs_input_grad[1] else None
        return (g_key, g_bias, *(ge if need else None for ge, need in zip(g_embs, ctx.needs_input_grad[2:],
                                                                           strict=True)))


class InterestPooling(nn.Module):
    """K attention-weighted bags of the user's history, one per interest (ComiRec-SA, Cen et al. 2020, with
    linear keys): a mean-pooled bag blends a user's interests into one vector, which then ranks the main
    interest's items above every secondary interest's.

    Position h of interest k weighs w_h * exp(key_k . x_h), x_h the concatenated embeddings of history item h,
    w_h its history weight: with zero keys every interest is the weighted mean bag. Keys start random, so the
    interests start a little apart; the loss scores an item by its best interest, which sends each item's gradient
    to one interest and moves them further apart.
    """

    def __init__(self, in_dim: int, interests: int):
        super().__init__()
        self.key = nn.Linear(in_dim, interests, bias=False)
        nn.init.normal_(self.key.weight, std=3.0 / in_dim ** 0.5)

    def forward(self, embs: list[Tensor], weights: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """embs: T x [B, L, E] (x_h is their concatenation, never built), weights / valid [B, L] -> attention
        [B, K, L] (rows of a user without history are 0) and the pooled bags [B, K, T * E]."""
        bias = torch.log(weights.clamp_min(1e-12)).masked_fill(~(valid & (weights > 0)), float("-inf"))  # [B, L]
        return _PooledBags.apply(self.key.weight, bias, *embs)


class Tower(nn.Module):
    """inputs -> concat -> MLP -> one linear head per objective -> L2 normalise (+ a scalar bias per head).

    id_table: the tower's own ID embedding (None = no ID input); history_table: the item-ID table read as a
    weighted bag of the user's history (user tower only); history_features: item-feature tables read as bags
    of the history items' feature codes (user tower only; shared with the item tower); id_dropout: share of
    training rows whose ID embedding is zeroed, so the tower also learns to embed from features alone (new
    items, new users); bias: each head also outputs an unnormalised scalar (item popularity that normalised
    vectors cannot hold), appended as the last column: [B, out_dim + 1]; interests: K > 1 pools the history K
    ways (InterestPooling) and outputs K vectors per head: [B, K, out_dim] (user tower only).
    """

    def __init__(self, features: list[dict[str, Any]], embed_dim: int, hidden: list[int], out_dim: int,
                 heads: list[str], id_table: nn.Embedding | None = None, history_table: nn.Embedding | None = None,
                 history_features: dict[str, nn.Embedding] | None = None, id_dropout: float = 0.0, bias: bool = False,
                 interests: int = 1):
        super().__init__()
        self.id_table, self.history_table, self.id_dropout = id_table, history_table, id_dropout
        self.history_features = nn.ModuleDict(history_features or {})
        if interests < 1:
            raise ValueError(f"interests must be 1 or more, got {interests}")
        if interests > 1 and (history_table is None or bias):
            raise ValueError("interests > 1 needs a history bag to pool and no bias (a user tower)")
        n_hist = (history_table is not None) + len(self.history_features)
        self.pooling = InterestPooling(embed_dim * n_hist, interests) if interests > 1 else None
        self.embedder = FeatureEmbedder(features, embed_dim)
        in_dim = self.embedder.out_dim + embed_dim * ((id_table is not None) + n_hist)
        if in_dim == 0:
            raise ValueError("a tower needs at least one input: an id table, a history bag or a feature")
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.GELU()]
            in_dim = h
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(in_dim, out_dim) for name in heads})
        self.biases = nn.ModuleDict({name: nn.Linear(in_dim, 1) for name in heads}) if bias else None

    def hidden(self, x: dict[str, Tensor]) -> Tensor:
        """[B, H], or [B, K, H] with interests."""
        parts = self.embedder(x)
        if self.id_table is not None:
            e = self.id_table(x["id"])  # [B, E]
            if self.training and self.id_dropout > 0:
                e = e * (torch.rand(e.shape[0], 1, device=e.device) >= self.id_dropout)
            parts.append(e)
        if self.pooling is not None:
            k = self.pooling.key.out_features
            return self.mlp(torch.cat([p[:, None].expand(-1, k, -1) for p in parts] + [self._interest_bags(x)], dim=2))
        if self.history_table is not None:
            parts.append(_weighted_bag(x["hist_items"], x["hist_weights"], self.history_table))
        for name, table in self.history_features.items():
            parts.append(_weighted_bag(x[f"hist_{name}"], x["hist_weights"], table))
        return self.mlp(torch.cat(parts, dim=1))

    def _interest_bags(self, x: dict[str, Tensor]) -> Tensor:
        """[B, K, E * T]: the T history bags (item IDs, then item features) pooled K ways; as in the one-vector
        bag, a table's missing codes (0) take no share of its mean."""
        codes = [x["hist_items"]] + [x[f"hist_{n}"] for n in self.history_features]
        tables = [self.history_table] + list(self.history_features.values())
        embs = [F.embedding(c, t.weight, padding_idx=0, sparse=True)
                for c, t in zip(codes, tables, strict=True)]  # T x [B, L, E], code 0 -> zeros
        attn, pooled = self.pooling(embs, x["hist_weights"], x["hist_rows"] > 0)  # [B, K, L], [B, K, E * T]
        known = attn @ torch.stack([c > 0 for c in codes], dim=2).to(attn.dtype)  # [B, K, T] share on known codes
        return pooled / known.clamp_min(1e-6).repeat_interleave(tables[0].embedding_dim, dim=2)

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.hidden(x)
        out = {name: F.normalize(head(h), dim=-1) for name, head in self.heads.items()}
        if self.biases is not None:
            out = {name: torch.cat([e, self.biases[name](h)], dim=-1) for name, e in out.items()}
        return out


def build_towers(items: dict[str, Any], users: dict[str, Any], embed_dim: int, hidden: list[int], out_dim: int,
                 heads: list[str], user_ids: bool, id_dropout: float, item_bias: bool,
                 interests: int = 1) -> tuple[Tower, Tower]:
    """Item and user towers sharing the item-ID table. items / users: TowerVocab.spec() dicts."""
    item_ids = nn.Embedding(items["n_ids"], embed_dim, padding_idx=0, sparse=True)
    with torch.no_grad():
        nn.init.normal_(item_ids.weight, std=0.05)
        item_ids.weight[0].zero_()  # row 0 = "no learned id" stays zero (padding_idx keeps it there)
    user_table = nn.Embedding(users["n_ids"], embed_dim, padding_idx=0, sparse=True) if user_ids else None
    item_tower = Tower(items["features"], embed_dim, hidden, out_dim, heads, id_table=item_ids, id_dropout=id_dropout,
                       bias=item_bias)
    shared = {n: item_tower.embedder.tables[n] for n in users.get("history_features", [])}
    user_tower = Tower(users["features"], embed_dim, hidden, out_dim, heads, id_table=user_table,
                       history_table=item_ids, history_features=shared, id_dropout=id_dropout,
                       interests=interests)
    return item_tower, user_tower
