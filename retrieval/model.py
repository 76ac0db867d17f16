"""The LightningModule: wraps the plain TwoTower (retrieval/inference.py) for the loss, the optimisers and
validation; the streaming frequency estimator of logQ lives here, since only training needs it."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from retrieval.corpus import DEFAULT_ROLES
from retrieval.frequency import StreamingFrequency
from retrieval.heads import SERVED, event_multipliers, heads_of, role_spec
from retrieval.inference import TwoTower
from retrieval.losses import Candidates, biased_scores, bonus_nll, column_bias, softmax_nll_lse
from retrieval.metrics import recall_at_k
from retrieval.repeat import history_entries


class TwoTowerModel(L.LightningModule):
    def __init__(
        self,
        item_inputs: dict[str, Any],
        user_inputs: dict[str, Any],
        embed_dim: int = 64,
        hidden: list[int] = [256],  # noqa: B006 (a config default, never mutated)
        out_dim: int = 64,
        user_ids: bool = False,
        interests: int = 1,
        id_dropout: float = 0.1,
        temperature: float = 0.05,
        item_bias: bool = True,
        conversion_weight: float | None = None,
        engagement_weight: float | None = None,
        aux_weight: float | None = None,
        heads: list[dict[str, Any]] | None = None,
        event_roles: dict[str, dict[str, float]] | None = None,
        logq: bool = True,
        repeat: bool = True,
        prior_feature: str | None = None,
        prior_smoothing: float = 0.01,
        prior_weight: float | None = None,
        freq_alpha: float = 0.05,
        freq_buckets: int = 1 << 20,
        lr: float = 1e-3,
        sparse_lr: float = 3e-3,
        recall_ks: list[int] = [10, 100],  # noqa: B006
    ):
        """
        Args:
            item_inputs: item tower input sizes (linked from data.item_spec).
            user_inputs: user tower input sizes (linked from data.user_spec).
            embed_dim: width of every ID, history and feature embedding.
            hidden: widths of each tower's MLP layers.
            out_dim: dimension of the served embeddings.
            user_ids: give the user tower a user-ID embedding besides history and features.
            interests: user vectors per user (1 = one); K > 1 pools the history K ways and scores an item by its
                best-matching interest (towers.InterestPooling); served as K index queries merged by score.
            id_dropout: share of training rows whose ID embedding is zeroed (teaches features-only embedding).
            temperature: softmax temperature (folded into the user embedding).
            item_bias: a learned scalar per item (from the item tower) added to its logit; served as one
                more dimension, so inner-product search stays exact.
            conversion_weight: shorthand for the default heads (None = 1.0): weight of conversion positives in
                the conversion (served) head's loss; 0 = engagement-only.
            engagement_weight: shorthand (None = 0.1): weight of dwell-weighted engagement positives in the
                conversion head's loss; 0 = conversion-only.
            aux_weight: shorthand (None = 0.5): loss weight of the auxiliary engagement head; 0 = no head.
            heads: one head per objective, replacing the shorthand (leave those None): a list of {name,
                positives: {event or role: multiplier}, weight, target (optional)}; one is named conversion
                (the default answer's). See retrieval/heads.py.
            event_roles: the data's event roles (linked from data.role_spec): what heads' event names resolve to.
            logq: logQ correction of in-batch (streaming frequency) and sampled (uniform) negatives.
            repeat: add a learned repeat term, scale * log1p(the item's summed weight in the user's history
                bag), to every score (retrieval/repeat.py); its scale is fitted on the towers' scores held
                fixed; served by merging the user's history items into the index's answer.
            prior_feature: a categorical item feature (also in the history bags): every score gets
                beta * log(the user's smoothed share of history on the item's value), beta learned per head
                (retrieval/prior.py); served as one more dimension per value of the feature. None = no prior.
            prior_smoothing: added to every value's history weight before the share is taken.
            prior_weight: beta held fixed at this value (logit units) instead of learned (None = learned).
            freq_alpha: learning rate of the streaming frequency estimator.
            freq_buckets: hash buckets of the streaming frequency estimator.
            lr: Adam learning rate of the dense layers.
            sparse_lr: SparseAdam learning rate of the embedding tables.
            recall_ks: K of the recall@K reported in validation and test.
        """
        super().__init__()
        self.save_hyperparameters()
        self.head_specs = heads_of(self.hparams)
        self.net = TwoTower.from_hparams(self.hparams)  # the towers and the served score: all that serving needs
        # [H, E] each head's multiplier of each event code's weight (not saved: derived from heads and roles).
        mult = event_multipliers(self.head_specs, event_roles or role_spec(DEFAULT_ROLES))
        self.register_buffer("event_mult", torch.from_numpy(mult), persistent=False)
        self.freq = StreamingFrequency(freq_buckets, freq_alpha)
        self.automatic_optimization = False  # two optimizers: SparseAdam for tables, Adam for dense layers
        self._val_items: list[Tensor] = []
        self._recall: dict[str, list[Tensor]] = {}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume a checkpoint written before the towers moved under ``net``: its keys sit at the top level."""
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if not k.startswith(("net.", "freq."))]:
            sd[f"net.{k}"] = sd.pop(k)

    # ---- training ----
    def _head_loss(self, head: str, u: Tensor, emb: Tensor, weight: Tensor, bias: Tensor,
                   affinity: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        """One head's loss: its sampled softmax of user vectors u [B, (K,) D] over the B in-batch and N sampled
        columns (emb [B + N, D]), rows of weight > 0. bias: [B, B + N] the step's column_bias (logQ and masks: the
        same for every head), plus the head's prior where the model has one; affinity: the repeat term's entries
        (rows, columns, history weights)."""
        net, B = self.net, weight.shape[0]
        rows = torch.nonzero(weight > 0).squeeze(1)
        if rows.numel() == 0:  # keeps every parameter in the graph (DDP) with a zero loss
            zero = (u.sum() + emb.sum()) * 0.0
            for extra in (net.repeat_raw, net.prior_raw):
                zero = zero if extra is None else zero + extra.sum() * 0.0
            return zero
        query = net.query(u)
        subset = rows.numel() * 2 < B  # a head of few positives computes its rows alone; others all, weighing 0
        if subset:
            query, bias = query[rows], bias[rows]
        target, weight = (rows, weight[rows]) if subset else (torch.arange(B, device=weight.device), weight)
        logits = biased_scores(query, emb, bias)  # [R, B + N]
        loss, lse = softmax_nll_lse(logits, target, weight)
        if affinity is not None:
            # The term's scale is fitted on the towers' scores held fixed (a second softmax over detached
            # logits). Trained through the same softmax, the towers learn to push the user's other history
            # items away to offset the term and lose their similarity structure (validation recall falls).
            # The bonus is non-zero only at a row's history items among the columns: read there alone.
            example, column, value = affinity  # [P] each: batch row, column, history weight
            if subset:
                row_of = torch.full((B,), -1, dtype=torch.long, device=weight.device)
                row_of[rows] = torch.arange(rows.numel(), device=weight.device)  # batch row -> row of the logits
                keep = row_of[example] >= 0
                example, column, value = row_of[example[keep]], column[keep], value[keep]
            bonus = net.repeat_term(value, head) / net.temperature  # [P'] in logit units
            loss = loss + bonus_nll(logits.detach(), lse, target, weight, (example, column), bonus)
        return loss

    def _step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        net, h = self.net, self.hparams
        B, N = batch["pos_item"].shape[0], batch["neg_item"].shape[0]
        u = net.user_tower(batch["user"])
        pos_neg = {k: torch.cat([v, batch["neg"][k]]) for k, v in batch["pos"].items()} if N else batch["pos"]
        items = net.item_tower(pos_neg)  # [B + N, D] per head: positives and negatives through the tower at once
        if self.training:
            self.freq.update(batch["pos_item"])
        w, event, users = batch["weight"], batch["event"], batch["user_key"]
        # What depends on ids alone is computed once for all heads: the masks and logQ of every column, and each
        # row's history weight of every column (the repeat term), kept as its few non-zero entries.
        cand = Candidates(None, batch["pos_item"], self.freq.log_prob(batch["pos_item"]) if h.logq else None, users)
        neg = None if not N else Candidates(None, batch["neg_item"], batch["neg_log_q"] if h.logq else None)
        bias = column_bias(torch.arange(B, device=w.device), users, cand, neg, u[SERVED].dtype)  # [B, B + N]
        prior = None
        if net.prior_raw is not None:  # [B, B + N] each row's log share at each column's value, before beta
            prior = net.prior_logits(batch["user"], pos_neg[net.prior_feature]).to(bias.dtype)
        affinity = None
        if net.repeat_raw is not None:
            affinity = history_entries(batch["user"]["hist_rows"], batch["user"]["hist_weights"],
                                       torch.cat([batch["pos_item"], batch["neg_item"]]))
        out, total = {}, None
        for i, head in enumerate(self.head_specs):  # [B] an example's weight in this head: its weight x multiplier
            head_bias = bias if prior is None else bias + net.prior_scale(head.name) * prior
            out[head.name] = self._head_loss(head.name, u[head.name], items[head.name], w * self.event_mult[i][event],
                                             head_bias, affinity)
            term = head.weight * out[head.name]
            total = term if total is None else total + term
        out["total"] = total
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        opt_sparse, opt_dense = self.optimizers()
        losses = self._step(batch)
        opt_sparse.zero_grad()
        opt_dense.zero_grad()
        self.manual_backward(losses["total"])
        # Lightning counts every LightningOptimizer.step() as a global step; stepping the sparse optimizer
        # underneath keeps global_step = batches (max_steps, logging, checkpoint names mean what they say).
        opt_sparse.optimizer.step()
        opt_dense.step()
        bs = batch["weight"].shape[0]
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/loss_{k}": v for k, v in losses.items() if k != "total"}, batch_size=bs)
        return losses["total"]

    def on_train_epoch_start(self) -> None:
        set_epoch = getattr(self.trainer.datamodule, "set_epoch", None)  # like a sampler's set_epoch
        if set_epoch is not None:
            set_epoch(self.current_epoch)

    def configure_optimizers(self):
        sparse, dense, seen = [], [], set()
        for m in self.modules():
            if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse and id(m.weight) not in seen:
                seen.add(id(m.weight))
                sparse.append(m.weight)
        dense = [p for p in self.parameters() if id(p) not in seen]
        return [torch.optim.SparseAdam(sparse, lr=self.hparams.sparse_lr),
                torch.optim.Adam(dense, lr=self.hparams.lr)]

    # ---- evaluation: exact search over the full catalogue ----
    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        if dataloader_idx == 0:  # the catalogue, in order
            self._val_items.append(self.net.embed_items(batch["item"]))
            return
        items = torch.cat(self._val_items)  # [N, D]
        scores = self.net.served_scores(self.net.embed_users(batch["user"]), items, batch["user"])  # [B, N]
        for name in ("conv", "eng"):
            for k, r in recall_at_k(scores, batch[f"{name}_targets"], self.hparams.recall_ks).items():
                r = r[~r.isnan()]
                acc = self._recall.setdefault(f"{name}_recall@{k}", [torch.zeros((), device=self.device)] * 2)
                acc[0], acc[1] = acc[0] + r.sum(), acc[1] + r.numel()

    def _eval_end(self, prefix: str) -> None:
        zero = [torch.zeros((), device=self.device)] * 2
        for name in [f"{n}_recall@{k}" for n in ("conv", "eng") for k in self.hparams.recall_ks]:
            total, count = self._recall.get(name, zero)  # every rank reduces every key, even with no users
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
            self.log(f"{prefix}/{name}", total / count.clamp_min(1), prog_bar=name.startswith("conv"),
                     sync_dist=True)  # already summed over ranks: equal everywhere
            if name.endswith(f"@{self.hparams.recall_ks[0]}"):
                self.log(f"{prefix}/{name.split('_')[0]}_users", count, sync_dist=True)
        self._val_items, self._recall = [], {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
