"""Koo et al. (arXiv 2504.16272): the `shap` library's explainers on the game v(S) = r(x, y_S).

Players are the response's RM tokens. shap sees a response as a row of T ones and asks for
values of 0/1 keep-masks; `TokenGame` turns each such request into one batched
`scorer.coalition_values` call, so the masked rows go through the RM together.

`algorithm`:
  * "partition" (default): shap's Partition explainer, Owen values over a balanced tree of
    contiguous spans (SCAR's and Koo et al.'s setting). For games with at most pairwise
    interactions, such as the synthetic task, Owen values equal Shapley values.
  * "permutation": shap's Permutation explainer, antithetic permutation sampling of Shapley
    values (no hierarchy).
  * "kernel": shap's KernelExplainer, a weighted regression (exact when it can enumerate all
    2^T coalitions). `l1_reg=False`: shap's default keeps only 10 features.

All three conserve the return by construction, whatever the budget: Partition's tree
recursion splits v(N) - v(empty) down the tree (an unexpanded node passes its whole share
to its leaves), each permutation's marginals telescope to v(N) - v(empty), and Kernel SHAP
eliminates one coefficient with the constraint sum(phi) = v(N) - v(empty).

RM rows per response, for `max_evals` E (v(N) is the batch's score and costs nothing):
  * partition: at most E - 1. Exact Owen values need about (2/3) T^2 rows: 30 at T = 6,
    172 at T = 16, 684 at T = 32, so the default E = 500 is exact up to T of about 27; above
    that the unexpanded spans share their value evenly among their tokens.
  * permutation: E // (2T + 1) permutations of at most 2T rows each; coalitions already
    scored for the response are not scored again, so small T needs far fewer rows.
  * kernel: min(E - 2, 2^T - 2) coalitions plus v(empty).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from shaping.attribution.base import Attributor
from shaping.attribution.options import Choice, Integer, Options
from shaping.batch import RolloutBatch
from shaping.scorer import NonFiniteRewardError, RewardScorer

Algorithm = Literal["partition", "permutation", "kernel"]
ALGORITHMS = ("partition", "permutation", "kernel")


class TokenGame:
    """v(S) for response i of a batch: (N, T) 0/1 keep-masks -> (N,) float64 values.

    Each call hands all its new masks to the scorer in one request. Masks scored in an
    earlier call for this response are read from a memo: shap's Permutation explainer asks for the empty
    coalition in every permutation, and for small T for most coalitions many times.
    """

    def __init__(self, scorer: RewardScorer, batch: RolloutBatch, i: int) -> None:
        self.scorer, self.i = scorer, i
        self.batch = RolloutBatch(  # a one-response batch: coalition_values is per row
            batch.prompt_ids[i : i + 1],
            batch.prompt_mask[i : i + 1],
            batch.response_ids[i : i + 1],
            batch.response_mask[i : i + 1],
            batch.scores[i : i + 1],
        )
        self.memo: dict[bytes, float] = {}

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        keep = np.asarray(masks) != 0  # (N, T)
        unique, inverse = np.unique(keep, axis=0, return_inverse=True)
        keys = [row.tobytes() for row in unique]
        todo = [k for k, key in enumerate(keys) if key not in self.memo]
        if todo:
            try:
                values = self.scorer.coalition_values(self.batch, [torch.from_numpy(unique[todo])])
            except NonFiniteRewardError as e:  # it names the response of the one-row batch: 0
                raise NonFiniteRewardError(self.i, e.text, e.value, e.row, e.method) from None
            self.memo.update(zip([keys[k] for k in todo], values[0].tolist(), strict=True))
        return np.array([self.memo[key] for key in keys])[inverse.reshape(-1)]


class KeepMasker:
    """A shap masker whose masked sample *is* the keep-mask: the model is a `TokenGame`.

    `clustering` (a scipy linkage) makes Partition compute Owen values over it; None makes
    Permutation sample plain Shapley permutations.
    """

    def __init__(self, T: int, clustering: np.ndarray | None) -> None:
        self.shape = (1, T)  # one masked sample per mask (no background to average over)
        self.clustering = clustering

    def __call__(self, mask: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.asarray(mask, dtype=np.float64).reshape(1, -1)  # (1, T)


def span_tree(T: int) -> np.ndarray:
    """(T - 1, 4) scipy linkage of a balanced binary tree over contiguous spans.

    Neighbouring clusters merge pairwise, level by level (an odd one out waits a level), so
    every cluster is a span of adjacent tokens and the depth is ceil(log2 T). Columns: left,
    right, height (the level), size; cluster T + k is row k, as scipy numbers them.
    """
    rows: list[list[float]] = []
    level = [(k, 1) for k in range(T)]  # (cluster id, size)
    height = 0
    while len(level) > 1:
        height += 1
        merged = []
        for (left, n_left), (right, n_right) in zip(level[::2], level[1::2], strict=False):
            merged.append((T + len(rows), n_left + n_right))
            rows.append([left, right, height, n_left + n_right])
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


@contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """shap draws from numpy's global RNG (Partition's tie-breaks, Permutation's shuffles,
    Kernel's samples); seed it for one explanation and give the caller's state back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class ShapAttributor(Attributor):
    name = "shap"
    conserves = True  # for every algorithm and budget: see the module docstring
    options: ClassVar[Options] = {
        "algorithm": Choice(ALGORITHMS),
        "max_evals": Integer(3, why="RM evaluations per response"),
        "seed": Integer(0, why="numpy's default_rng"),
    }

    def __init__(
        self,
        scorer: RewardScorer,
        algorithm: Algorithm = "partition",
        max_evals: int = 500,
        seed: int = 0,
    ) -> None:
        self.check_options(algorithm=algorithm, max_evals=max_evals, seed=seed)
        super().__init__(scorer)
        self.algorithm, self.max_evals = algorithm, max_evals
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "rng": self.rng.bit_generator.state}

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        if "rng" in state:  # older checkpoints kept torch generators only
            self.rng.bit_generator.state = dict(state["rng"])

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        credits = torch.zeros(batch.response_ids.shape)
        for i in range(batch.size):
            game = TokenGame(self.scorer, batch, i)
            seed = int(self.rng.integers(2**31))
            with numpy_seed(seed):
                phi = self._explain(game, int(batch.lengths[i]), seed)
            credits[i, : phi.shape[0]] = torch.from_numpy(phi).float()
        return credits

    def _explain(self, game: TokenGame, T: int, seed: int) -> np.ndarray:
        """shap values (T,) of one response's game. shap is imported here, on first use:
        importing it takes seconds that runs without this method should not pay."""
        import shap

        x = np.ones((1, T))  # the response with every token kept
        if self.algorithm == "kernel":  # background = all masked: its samples are keep-masks
            explainer = shap.KernelExplainer(game, np.zeros((1, T)))
            # max_evals counts v(empty) and v(N), as Partition's does.
            n = self.max_evals - 2
            phi = explainer.shap_values(x, nsamples=n, l1_reg=False, silent=True)
            return np.asarray(phi, dtype=np.float64).reshape(T)
        if self.algorithm == "partition":
            explainer = shap.explainers.Partition(game, KeepMasker(T, span_tree(T)))
        else:
            if self.max_evals < 2 * T + 1:
                raise ValueError(
                    f"max_evals={self.max_evals} is below the {2 * T + 1} evaluations that one "
                    f"antithetic permutation of a {T}-token response needs; raise max_evals "
                    "or use algorithm='partition'"
                )
            # Permutation reseeds numpy's global RNG itself (from the OS when seed is None).
            explainer = shap.explainers.Permutation(game, KeepMasker(T, None), seed=seed)
        # batch_size: shap's default of 10 masks a model call would cut each Partition round
        # and each permutation into many small RM requests.
        out = explainer(x, max_evals=self.max_evals, batch_size=self.max_evals, silent=True)
        return np.asarray(out.values, dtype=np.float64).reshape(T)
