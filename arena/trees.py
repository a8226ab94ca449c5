"""Decision-tree victims: a scikit-learn tree served as an ``nn.Module`` with leaf confidences.

Tramèr et al., "Stealing Machine Learning Models via Prediction APIs" (USENIX Security 2016, §4.2)
steal decision trees from BigML, whose API answers every query with the label *and a confidence
that identifies the leaf the query reached*. This module builds that victim for the arena.

Fitting: ``DecisionTreeClassifier(max_depth, random_state=seed)`` on the flattened victim split
(its first ``train_size`` images when set), which is deterministic for one setup.

Serving: the fitted tree is copied into a *complete* binary tree of depth ``max_depth`` in heap
order (node ``k`` has children ``2k + 1`` and ``2k + 2``), held in three registered buffers:
``feature`` and float64 ``threshold`` for the ``2**D - 1`` internal nodes and ``leaf_logits``
for the ``2**D`` leaves. A scikit-learn leaf shallower than ``D`` is padded with internal nodes
whose threshold is ``+inf`` (always go left). ``forward`` descends the ``D`` levels for the whole
batch at once and, like scikit-learn, goes right when ``x[feature] > threshold``, comparing in
float64. Everything lives in the state dict, so the victim cache (``torch.save`` of the state
dict, ``weights_only`` loading), the victim service, the referee and the Ray path serve a tree
like any other victim.

Answers: a leaf's logits are the logarithms of its *Laplace-smoothed class frequencies*
``(n_c + 1) / (n + C)`` (``n_c`` training images of class ``c`` reached it, ``n`` in all), so the
service's softmax returns exactly that vector: its argmax is the tree's label and the vector
identifies the leaf. Two leaves give the same vector exactly when they hold the same class
counts — in practice small pure leaves of one class and size (two leaves each holding two
images of class 3); float32 can also merge two very large leaves whose smoothed frequencies
differ by less than its resolution. :mod:`agents.path_finding` says what the attack does then.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

_LEAF = -1
"""scikit-learn's child index of a leaf"""


def device_anchor() -> nn.Parameter:
    """An empty, frozen parameter for modules that have none: code that finds a model's device
    from its first parameter (:func:`arena.training.predict_probs`) works on them too."""
    return nn.Parameter(torch.zeros(0), requires_grad=False)


class DecisionTreeModule(nn.Module):
    """A depth-``D`` complete binary tree in buffers; ``forward`` returns the reached leaf's logits.

    ``leaf_logits`` is ``[2**D, C]`` and ``feature``/``threshold`` ``[2**D - 1]``; the depth is
    implied by the buffer shapes, so :meth:`from_state` rebuilds the module from a state dict.
    """

    feature: torch.Tensor
    threshold: torch.Tensor
    leaf_logits: torch.Tensor

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        self.depth = depth
        internal, leaves = 2**depth - 1, 2**depth
        self.register_buffer("feature", torch.zeros(internal, dtype=torch.int64))
        self.register_buffer("threshold", torch.full((internal,), math.inf, dtype=torch.float64))
        self.register_buffer("leaf_logits", torch.zeros(leaves, num_classes))
        self.device_anchor = device_anchor()

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> DecisionTreeModule:
        """Rebuild a served tree from its state dict (e.g. loaded from the victim cache)."""
        leaves, num_classes = (int(s) for s in state["leaf_logits"].shape)
        depth = leaves.bit_length() - 1
        if leaves != 2**depth or int(state["feature"].shape[0]) != leaves - 1:
            raise ValueError(f"not a complete binary tree state: {leaves} leaves")
        module = cls(depth, num_classes)
        module.load_state_dict(state)
        return module.eval()

    def leaf_index(self, x: torch.Tensor) -> torch.Tensor:
        """The index (``0 .. 2**D - 1``) of the leaf each row of ``x`` reaches."""
        flat = x.flatten(1)
        node = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
        for _ in range(self.depth):
            value = flat.gather(1, self.feature[node].unsqueeze(1)).squeeze(1)
            right = value.double() > self.threshold[node]
            node = 2 * node + 1 + right.long()
        return node - ((1 << self.depth) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leaf_logits[self.leaf_index(x)]

    def leaf_count(self) -> int:
        """Leaves of the fitted tree (padding nodes never go right, so they add none)."""
        finite = torch.isfinite(self.threshold).tolist()

        def count(node: int, level: int) -> int:
            if level == self.depth:
                return 1
            if not finite[node]:
                return count(2 * node + 1, level + 1)
            return count(2 * node + 1, level + 1) + count(2 * node + 2, level + 1)

        return count(0, 0)


def laplace_frequencies(counts: np.ndarray) -> np.ndarray:
    """Rows of class counts ``[L, C]`` to ``(n_c + 1) / (n + C)``, the served confidences."""
    smoothed: np.ndarray = (counts + 1.0) / (counts.sum(axis=1, keepdims=True) + counts.shape[1])
    return smoothed


def fit_tree(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, max_depth: int, seed: int
) -> DecisionTreeModule:
    """Fit a scikit-learn tree on flattened ``x`` and copy it into a :class:`DecisionTreeModule`."""
    from sklearn.tree import DecisionTreeClassifier  # imported here: serving never needs it

    features = x.flatten(1).numpy()
    labels = y.numpy()
    tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(features, labels)
    structure = tree.tree_
    # scikit-learn stores class fractions; weighted sample counts turn them back into counts
    fractions = structure.value[:, 0, :]
    counts = np.zeros((structure.node_count, num_classes))
    counts[:, tree.classes_.astype(np.int64)] = np.rint(
        fractions * structure.weighted_n_node_samples[:, None]
    )
    logits = np.log(laplace_frequencies(counts)).astype(np.float32)

    module = DecisionTreeModule(max_depth, num_classes)
    feature = module.feature.numpy()
    threshold = module.threshold.numpy()
    leaf_logits = module.leaf_logits.numpy()
    # (scikit-learn node, heap node, level); a leaf above the last level fills its padding's
    # leftmost path: padding nodes keep threshold +inf, so queries only ever go left there
    stack = [(0, 0, 0)]
    while stack:
        source, node, level = stack.pop()
        if level == max_depth:
            leaf_logits[node - (2**max_depth - 1)] = logits[source]
            continue
        left, right = structure.children_left[source], structure.children_right[source]
        if left == _LEAF:
            stack.append((source, 2 * node + 1, level + 1))
            continue
        feature[node] = structure.feature[source]
        threshold[node] = structure.threshold[source]
        stack.append((left, 2 * node + 1, level + 1))
        stack.append((right, 2 * node + 2, level + 1))
    return module.eval()
