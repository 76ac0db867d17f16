"""One head per objective: which events are a head's positives, how each weighs, the head's weight in the loss,
and the events its calibrated probability is of. Plain config code, no torch.

A head is declared in ``model.heads`` as ``{name, positives: {event or role: multiplier}, weight, target}``:
positives name events of ``data.roles`` (``purchase``, ``add_to_cart``) or a whole role (``conversions``,
``engagement``); an example's weight in the head's softmax is its event weight (role weight, dwell curve) times
the multiplier. ``target`` (default: the head's conversion events if it has any, else all its positives) is what
the head's calibrated probability ``p_<head>`` is the probability of.

Without ``model.heads``, the shorthand ``conversion_weight`` / ``engagement_weight`` / ``aux_weight`` declares
today's two heads: conversion (conversions plus down-weighted dwell-weighted engagement) and, when
``aux_weight > 0``, the auxiliary engagement head.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.contract import DataError
from retrieval.events import EventRoles

SERVED = "conversion"  # the head the default answer ranks by
ROLES = ("conversions", "engagement")
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
DEFAULT_WEIGHTS = {"conversion_weight": 1.0, "engagement_weight": 0.1, "aux_weight": 0.5}


class HeadsError(DataError):
    """A head declaration the model cannot train: the message names the head and the field (a config error,
    reported in one line by the CLI)."""


@dataclass(frozen=True)
class Head:
    name: str
    positives: dict[str, float]  # event or role name -> multiplier of the example weight
    weight: float = 1.0  # the head's weight in the total loss
    target: tuple[str, ...] | None = None  # events or roles its probability is of (None: the default rule)


def role_spec(roles: EventRoles) -> dict[str, dict[str, float]]:
    """The data's roles as plain dicts (what model.event_roles is linked to): {conversions: {...}, engagement:
    {...}}."""
    return {"conversions": dict(roles.conversions), "engagement": dict(roles.engagement)}


def event_names(roles: dict[str, dict[str, float]]) -> list[str]:
    """The event names in code order (conversions, then engagement: retrieval.events.EventRoles.names)."""
    return [*roles["conversions"], *roles["engagement"]]


def shorthand_heads(conversion_weight: float, engagement_weight: float, aux_weight: float) -> list[Head]:
    """Today's heads from the three weights: conversion (served), and engagement when aux_weight > 0."""
    heads = [Head(SERVED, {"conversions": conversion_weight, "engagement": engagement_weight}, 1.0, ("conversions",))]
    if aux_weight > 0:
        heads.append(Head("engagement", {"engagement": 1.0}, aux_weight, ("engagement",)))
    return heads


def parse_heads(raw: list[dict[str, Any]] | None, shorthand: dict[str, float | None]) -> list[Head]:
    """The heads of a model config: ``model.heads`` (raw dicts), or the shorthand weights when it is None. A
    HeadsError names what is wrong; the served head comes first."""
    if raw is None:
        w = {k: DEFAULT_WEIGHTS[k] if v is None else float(v) for k, v in shorthand.items()}
        if w["conversion_weight"] <= 0 and w["engagement_weight"] <= 0:
            raise HeadsError("model: conversion_weight and engagement_weight are both 0: the served head learns nothing")
        return shorthand_heads(w["conversion_weight"], w["engagement_weight"], w["aux_weight"])
    set_ = [k for k, v in shorthand.items() if v is not None]
    if set_:
        raise HeadsError(f"model: heads is set, and so is {set_}: heads replaces the shorthand weights; set "
                         f"them to null")
    if not isinstance(raw, list) or not raw:
        raise HeadsError("model.heads: expected a non-empty list of {name, positives, weight}")
    heads, seen = [], set()
    for i, h in enumerate(raw):
        if not isinstance(h, dict) or set(h) - {"name", "positives", "weight", "target"} or "name" not in h:
            raise HeadsError(f"model.heads[{i}]: expected keys name, positives, weight (optional), target "
                             f"(optional); got {h!r}")
        name = h["name"]
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in seen:
            raise HeadsError(f"model.heads[{i}].name: {name!r} is not a new name of lower-case letters, digits "
                             f"and _")
        seen.add(name)
        pos = h.get("positives")
        if not isinstance(pos, dict) or not pos or not all(
                isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in pos.values()) \
                or not any(v > 0 for v in pos.values()):
            raise HeadsError(f"model.heads[{i}].positives ({name}): expected {{event or role: multiplier >= 0}} "
                             f"with one multiplier above 0; got {pos!r}")
        weight = h.get("weight", 1.0)
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise HeadsError(f"model.heads[{i}].weight ({name}): expected a finite loss weight > 0; got {weight!r}")
        target = h.get("target")
        if target is not None and (not isinstance(target, list) or not target
                                   or not all(isinstance(t, str) for t in target)):
            raise HeadsError(f"model.heads[{i}].target ({name}): expected a list of event or role names")
        heads.append(Head(name, {str(k): float(v) for k, v in pos.items()}, float(weight),
                          None if target is None else tuple(target)))
    names = [h.name for h in heads]
    if SERVED not in names:
        raise HeadsError(f"model.heads: no head named '{SERVED}' (the default answer's); got {names}")
    heads.sort(key=lambda h: h.name != SERVED)  # the served head first, the rest in declared order
    return heads


def _events_of(names: dict[str, Any] | tuple[str, ...], roles: dict[str, dict[str, float]], what: str) -> list[str]:
    """Event names that ``names`` (event or role names) cover; a HeadsError names one that is neither."""
    out = []
    for n in names:
        if n in ROLES:
            out += list(roles.get(n, {}))
        elif n in roles.get("conversions", {}) or n in roles.get("engagement", {}):
            out.append(n)
        else:
            known = [*ROLES, *roles.get("conversions", {}), *roles.get("engagement", {})]
            raise HeadsError(f"{what}: '{n}' is neither an event of data.roles nor a role; known: {known}")
    return out


def event_multipliers(heads: list[Head], roles: dict[str, dict[str, float]]) -> np.ndarray:
    """[H, E] float32: per head, the multiplier of each event code (data.roles' names: conversions, then
    engagement) in its softmax weights; an event a head does not name weighs 0 there."""
    names = event_names(roles)
    out = np.zeros((len(heads), len(names)), np.float32)
    for h, head in enumerate(heads):
        # Roles first, then events: an event named beside its role keeps its own multiplier.
        for key, mult in sorted(head.positives.items(), key=lambda kv: kv[0] not in ROLES):
            for e in _events_of((key,), roles, f"model.heads ({head.name}).positives"):
                out[h, names.index(e)] = mult
    return out


def target_events(head: Head, roles: dict[str, dict[str, float]]) -> list[str]:
    """The events a head's calibrated probability is of: its ``target``, else its positive conversion events if
    it has any, else all its positive events."""
    if head.target is not None:
        return _events_of(head.target, roles, f"model.heads ({head.name}).target")
    mult = event_multipliers([head], roles)[0]
    positive = [n for n, m in zip(event_names(roles), mult, strict=True) if m > 0]
    conv = [n for n in positive if n in roles["conversions"]]
    return conv or positive


def heads_of(hp: dict[str, Any]) -> list[Head]:
    """The heads of saved model hyperparameters (a checkpoint written before ``heads`` existed has the
    shorthand weights alone)."""
    return parse_heads(hp.get("heads"), {k: hp.get(k) for k in DEFAULT_WEIGHTS})
