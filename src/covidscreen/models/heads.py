"""Classification heads fitted by scikit-learn on frozen trunk features, as plain tensors in the network.

A frozen-feature head (Gurpur et al.: MobileNetV2 features with a gradient-boosting classifier) replaces the
registry head of an architecture (``ModelSpec.head``), so that the run is an ordinary covidscreen run: its weights
live in ``model.safetensors`` (tensors only, no code: a pickled scikit-learn estimator could execute anything when
loaded), the sidecar's ``frozen_head`` says which module to build before the weights are loaded, and the Predictor,
ensembles, evaluate and calibrate use it unchanged.

- :class:`LogisticHead`: multinomial (or binary) logistic regression is a linear layer; the standardisation of the
  features is folded into its weights.
- :class:`TreeEnsembleHead`: the regression trees of a gradient-boosting classifier as padded node arrays,
  evaluated on any device by walking every tree in parallel; splits compare in float64 as scikit-learn does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

FROZEN_HEADS = ("logistic", "gradient-boosting")


class LogisticHead(nn.Linear):
    """A linear layer whose weights came from a logistic regression (same state-dict keys as ``nn.Linear``)."""

    kind = "logistic"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "in_features": self.in_features, "num_classes": self.out_features}


class TreeEnsembleHead(nn.Module):
    """Sum of regression trees per class plus a baseline: the raw scores (logits) of a gradient-boosting classifier.

    Node arrays have shape ``(trees, nodes)``: ``feature`` (feature index), ``threshold`` (go left when
    ``x[feature] <= threshold``), ``left``/``right`` (child node; a leaf points at itself), ``value`` (the leaf's
    contribution, learning rate included) and ``tree_class`` (the class whose score a tree adds to). A binary
    classifier has one score ``s`` and returns logits ``(0, s)``, whose softmax is ``(1 - sigmoid(s), sigmoid(s))``.
    """

    kind = "gradient-boosting"

    def __init__(self, in_features: int, num_classes: int, n_trees: int, n_nodes: int, depth: int) -> None:
        super().__init__()
        self.in_features, self.num_classes, self.depth = in_features, num_classes, depth
        self.n_scores = 1 if num_classes == 2 else num_classes
        self.register_buffer("feature", torch.zeros(n_trees, n_nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(n_trees, n_nodes, dtype=torch.float64))
        self.register_buffer("left", torch.zeros(n_trees, n_nodes, dtype=torch.int64))
        self.register_buffer("right", torch.zeros(n_trees, n_nodes, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(n_trees, n_nodes, dtype=torch.float64))
        self.register_buffer("tree_class", torch.zeros(n_trees, dtype=torch.int64))
        self.register_buffer("baseline", torch.zeros(self.n_scores, dtype=torch.float64))

    def describe(self) -> dict[str, Any]:
        n_trees, n_nodes = self.feature.shape
        return {"kind": self.kind, "in_features": self.in_features, "num_classes": self.num_classes,
                "n_trees": int(n_trees), "n_nodes": int(n_nodes), "depth": self.depth}

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Raw boosting scores ``(B, n_scores)`` in float64."""
        x = x.reshape(x.shape[0], -1).double()
        n_trees = self.feature.shape[0]
        node = torch.zeros(x.shape[0], n_trees, dtype=torch.int64, device=x.device)
        trees = torch.arange(n_trees, device=x.device).expand_as(node)
        for _ in range(self.depth):  # a leaf points at itself, so extra steps are harmless
            f = self.feature[trees, node]
            go_left = torch.gather(x, 1, f) <= self.threshold[trees, node]
            node = torch.where(go_left, self.left[trees, node], self.right[trees, node])
        leaf = self.value[trees, node]  # (B, trees)
        out = self.baseline.expand(x.shape[0], -1).clone()
        return out.index_add_(1, self.tree_class, leaf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scores(x)
        if self.n_scores == 1:
            s = torch.cat([torch.zeros_like(s), s], dim=1)
        return s.to(torch.float32)


def build_frozen_head(description: dict[str, Any]) -> nn.Module:
    """An empty head of the shape a sidecar's ``frozen_head`` describes (its weights are loaded afterwards)."""
    try:
        kind = description["kind"]
        if kind == "logistic":
            return LogisticHead(int(description["in_features"]), int(description["num_classes"]))
        if kind == "gradient-boosting":
            return TreeEnsembleHead(int(description["in_features"]), int(description["num_classes"]),
                                    int(description["n_trees"]), int(description["n_nodes"]),
                                    int(description["depth"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the sidecar's frozen_head {description!r} is malformed ({exc})") from None
    raise CheckpointError(f"the sidecar's frozen_head kind {kind!r} is not known; known: {', '.join(FROZEN_HEADS)}")


def replace_head(backbone: nn.Module, path: str, head: nn.Module) -> None:
    """Put ``head`` at the dotted module ``path`` of ``backbone`` (the registry's head path)."""
    parent, _, name = path.rpartition(".")
    setattr(backbone.get_submodule(parent) if parent else backbone, name, head)
