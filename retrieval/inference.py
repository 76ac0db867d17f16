"""The trained two towers as a plain nn.Module: what the index job, the service and evaluation score with.

No Lightning here: training wraps this module (retrieval/model.py) for the loss and validation; everything that
only embeds or scores (index/build.py, serve/, retrieval/evaluate.py) holds a ``TwoTower`` and its config.

Training scores u.e / temperature + b (+ beta * log_share[c], the prior on the user's mix over an item
feature, retrieval/prior.py); the served vectors [e, temperature * b (, one_hot(c))] and
[u, 1 (, temperature * beta * log_share)] give temperature times that score by plain inner product, so an
inner-product index ranks exactly as the model does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from retrieval.contract import DataError
from retrieval.heads import SERVED, heads_of
from retrieval.losses import interest_scores
from retrieval.prior import log_share, one_hot
from retrieval.repeat import history_affinity, repeat_scale
from retrieval.towers import build_towers

# The model hyperparameters that shape the towers and the served score; the rest (loss weights, learning rates)
# are training's alone.
ARCHITECTURE = ("item_inputs", "user_inputs", "embed_dim", "hidden", "out_dim", "user_ids", "interests",
                "id_dropout", "temperature", "item_bias", "repeat", "prior_feature", "prior_smoothing", "prior_weight")


def to_torch(x: Any) -> Any:
    """A batch of numpy arrays (a dict, nested) as tensors sharing their memory."""
    if isinstance(x, dict):
        return {k: to_torch(v) for k, v in x.items()}
    return torch.from_numpy(np.ascontiguousarray(x))


class TwoTower(nn.Module):
    def __init__(self, item_inputs: dict[str, Any], user_inputs: dict[str, Any], embed_dim: int, hidden: list[int],
                 out_dim: int, heads: list[str], user_ids: bool = False, interests: int = 1, id_dropout: float = 0.0,
                 temperature: float = 0.05, item_bias: bool = True, repeat: bool = True,
                 prior_feature: str | None = None, prior_smoothing: float = 0.01, prior_weight: float | None = None):
        """Arguments as documented on retrieval.model.TwoTowerModel, which builds this from its own config;
        heads: the towers' output heads, "conversion" (served) first."""
        super().__init__()
        self.prior_feature, self.prior_smoothing, self.prior_width = prior_feature, float(prior_smoothing), 0
        if prior_feature is not None:
            self.prior_width = _prior_width(prior_feature, item_inputs, user_inputs)
        self.temperature, self.item_bias, self.interests = float(temperature), bool(item_bias), int(interests)
        self.out_dim, self.heads = int(out_dim), list(heads)
        self.item_tower, self.user_tower = build_towers(item_inputs, user_inputs, embed_dim, hidden, out_dim, heads,
                                                        user_ids, id_dropout, item_bias, interests)
        # One raw scale per head, softplus(0) = 0.69 in served (cosine) units: enough to lift a history item into
        # the top 100 from the start; learned from there.
        self.repeat_raw = nn.Parameter(torch.zeros(len(heads))) if repeat else None
        # One weight per head of the prior, in logit units: learned from 0 (the towers start as without it), or
        # held at prior_weight (a buffer: saved with the weights, never trained).
        if prior_feature is None:
            self.prior_raw = None
        elif prior_weight is None:
            self.prior_raw = nn.Parameter(torch.zeros(len(heads)))
        else:
            self.register_buffer("prior_raw", torch.full((len(heads),), float(prior_weight)))

    @classmethod
    def from_hparams(cls, hp: dict[str, Any]) -> TwoTower:
        """The module a TwoTowerModel config describes (its hyperparameters, as saved in a checkpoint)."""
        return cls(heads=[h.name for h in heads_of(hp)], **{k: hp[k] for k in ARCHITECTURE if k in hp})

    @property
    def embedding_dim(self) -> int:
        """Width of a served vector: the embedding, plus one column for the item bias and the prior's C."""
        return self.out_dim + int(self.item_bias) + self.prior_width

    def query(self, u: Tensor) -> Tensor:
        """[B, (K,) embedding_dim] training query of a head's user output: u / temperature (+ 1 for the bias)."""
        q = u / self.temperature
        return torch.cat([q, torch.ones_like(q[..., :1])], -1) if self.item_bias else q

    def served_item(self, e: Tensor, x: dict[str, Tensor]) -> Tensor:
        """[B, embedding_dim] served item vectors of a head's item output [B, out_dim (+ 1)] for item inputs x:
        [e, temperature * b, one_hot(x[prior_feature])]."""
        v = torch.cat([e[:, :-1], e[:, -1:] * self.temperature], 1) if self.item_bias else e
        return v if self.prior_raw is None else torch.cat([v, one_hot(x[self.prior_feature], self.prior_width)], 1)

    def served_user(self, u: Tensor, x: dict[str, Tensor], head: str = SERVED, share: Tensor | None = None) -> Tensor:
        """[B, (K,) embedding_dim] served user vectors of a head's user output for user inputs x:
        [u, 1, temperature * beta * log_share]; share: :meth:`user_log_share` of x where the caller has it
        (every head's vectors share it)."""
        v = torch.cat([u, torch.ones_like(u[..., :1])], -1) if self.item_bias else u
        if self.prior_raw is None:
            return v
        share = self.user_log_share(x) if share is None else share
        p = (self.temperature * self.prior_scale(head) * share).to(v.dtype)  # [B, C]
        if v.dim() == 3:  # the same prior on each of the K interest vectors
            p = p[:, None].expand(-1, v.shape[1], -1)
        return torch.cat([v, p], -1)

    def user_log_share(self, x: dict[str, Tensor]) -> Tensor:
        """[B, C] the prior's log share of each value of the feature in the users' history bags."""
        return log_share(x[f"hist_{self.prior_feature}"], x["hist_weights"], self.prior_width, self.prior_smoothing)

    def prior_scale(self, head: str = SERVED) -> Tensor:
        """The prior's weight beta of one head, in logit units."""
        return self.prior_raw[self.heads.index(head)]

    def prior_logits(self, x: dict[str, Tensor], codes: Tensor) -> Tensor:
        """[B, C'] the prior's log share of each user (inputs x, B rows) at each column's code (codes [C']),
        before beta: what training adds, times each head's beta, to that head's logits."""
        return self.user_log_share(x)[:, codes]

    def embed_items(self, x: dict[str, Tensor], head: str = SERVED) -> Tensor:
        """[B, embedding_dim] served item vectors of one head (the conversion head by default)."""
        return self.served_item(self.item_tower(x)[head], x)

    def embed_users(self, x: dict[str, Tensor], head: str = SERVED) -> Tensor:
        """[B, embedding_dim] served user vectors of one head; [B, K, embedding_dim] with K interests."""
        return self.served_user(self.user_tower(x)[head], x, head)

    def embed_users_heads(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every head's served user vectors from one run of the tower: {head: [B, (K,) embedding_dim]}."""
        share = None if self.prior_raw is None else self.user_log_share(x)  # [B, C] once for every head
        return {h: self.served_user(u, x, h, share) for h, u in self.user_tower(x).items()}

    def repeat_scale(self, head: str = SERVED) -> Tensor:
        """Served-units scale of the repeat term (0 without one): score += scale * log1p(history weight)."""
        if self.repeat_raw is None:
            return torch.zeros((), device=self.item_tower.heads["conversion"].weight.device)
        return repeat_scale(self.repeat_raw[self.heads.index(head)])

    def repeat_term(self, affinity: Tensor, head: str = SERVED) -> Tensor:
        """The repeat term in served units, scale * log1p(affinity), of items' summed history weight (any shape):
        the one formula behind training, evaluation and the index job's history scores."""
        return self.repeat_scale(head) * torch.log1p(affinity)

    def served_scores(self, users: Tensor, items: Tensor, user_x: dict[str, Tensor], head: str = SERVED) -> Tensor:
        """[B, N] full scores of one head's served user vectors [B, (K,) D] against every catalogue item [N, D]
        (rows in order): the best interest's inner product plus the head's repeat term."""
        scores = interest_scores(users, items)
        if self.repeat_raw is not None:
            catalogue = torch.arange(items.shape[0], device=items.device)  # rows past a partial catalogue drop out
            scores = scores + self.repeat_term(history_affinity(user_x["hist_rows"], user_x["hist_weights"], catalogue),
                                               head)
        return scores


def _prior_width(name: str, item_inputs: dict[str, Any], user_inputs: dict[str, Any]) -> int:
    """Codes of the prior's item feature (its table's width); a name that is no categorical or hashed item
    feature, or one the history bags do not carry, is refused naming what there is (a config error: the CLI
    says it in one line)."""
    specs = {f["name"]: f for f in item_inputs["features"] if f["kind"] in ("categorical", "hashed")}
    if name not in specs:
        raise DataError(f"model.prior_feature: {name!r} is not a categorical or hashed item feature; the items "
                         f"have {sorted(specs) or 'none'}")
    if name not in user_inputs.get("history_features", []):
        raise DataError(f"model.prior_feature: {name!r} is not in the user's history bags "
                         f"(data.history.item_features must be true)")
    return int(specs[name]["width"])


def load_state(net: TwoTower, state: dict[str, Tensor]) -> None:
    """Load weights saved by a TwoTowerModel (keys under ``net.``; before the inference layer existed, at the top
    level) or by a TwoTower itself; the training-only streaming frequency estimate (``freq.``) is not needed."""
    own = {k.removeprefix("net."): v for k, v in state.items() if not k.startswith("freq.")}
    net.load_state_dict(own)
