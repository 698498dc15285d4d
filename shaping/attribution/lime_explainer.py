"""Koo et al. (arXiv 2504.16272): the `lime` library's LimeTextExplainer on token masks.

LIME works on strings, so each response token becomes one "word": the response is written
as "t0 t1 ... t{T-1}" and split on spaces, with `bow=False` so that a word is a position
(masking word k = masking token k). The classifier function reads LIME's perturbed strings
back into keep-masks and scores all of them in one `scorer.coalition_values` call.

LIME's coefficients come from a kernel-weighted ridge regression on random coalitions and do
not sum to v(N) - v(empty): `conserves` is False, `offsets` is v(empty) (the all-masked
response), and the base class adds the residual back and records its size. v(empty) rides
along in the classifier's one request (one row, and none when LIME drew it itself).

Library defaults changed here: every token is a feature (LIME keeps 10 by default, chosen by
forward selection), and `num_samples` is 500, not 5000. RLHF attributes every response of
every PPO batch, so 5000 RM rows a response is ten times the shap method's default budget;
500 matches it (the two Koo et al. methods then cost the same), and still gives about 10
samples per feature for responses of up to 50 tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from shaping.attribution.base import Attributor
from shaping.attribution.options import Integer, Options
from shaping.attribution.shap_explainer import TokenGame
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer

MASK_WORD = "_"
"""What LIME writes in place of a removed word (with bow=False it keeps the position)."""


class LimeAttributor(Attributor):
    name = "lime"
    conserves = False
    options: ClassVar[Options] = {
        "num_samples": Integer(
            2, why="LIME's perturbed samples per response, the original included"
        ),
        "seed": Integer(0, 2**32 - 1, why="numpy's RandomState"),
    }

    def __init__(
        self,
        scorer: RewardScorer,
        num_samples: int = 500,
        seed: int = 0,
    ) -> None:
        self.check_options(num_samples=num_samples, seed=seed)
        super().__init__(scorer)
        self._empty_values: tuple[RolloutBatch | None, torch.Tensor] = (None, torch.zeros(0))
        """The last batch `_credits` saw, and its v(empty) per response, for `offsets`."""
        # Imported here, on first use: the import takes a second or two that runs without
        # this method should not pay.
        from lime.lime_text import LimeTextExplainer

        self.num_samples = num_samples
        # One explainer for the attributor's life: its RandomState, seeded once, makes a
        # fresh attributor with the same seed give the same credits on the same batches.
        self.explainer = LimeTextExplainer(
            feature_selection="none",  # every token is a feature
            split_expression=" ",
            bow=False,
            mask_string=MASK_WORD,
            random_state=seed,
        )

    def state(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = self.explainer.random_state.get_state()
        keys = torch.from_numpy(keys.astype(np.int64))  # a tensor: checkpoints load weights_only
        return {**super().state(), "random_state": [kind, keys, position, has_gauss, gauss]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        if "random_state" in state:  # older checkpoints kept torch generators only
            kind, keys, position, has_gauss, gauss = state["random_state"]
            random_state = (kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
            self.explainer.random_state.set_state(random_state)

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        credits = torch.zeros(batch.response_ids.shape)
        empty_values = torch.zeros(batch.size)
        for i in range(batch.size):
            T = int(batch.lengths[i])
            game = TokenGame(self.scorer, batch, i)
            empty = np.zeros((1, T), dtype=bool)

            def classifier(
                texts: list[str], game: TokenGame = game, empty: np.ndarray = empty
            ) -> np.ndarray:
                keep = np.array([[w != MASK_WORD for w in s.split(" ")] for s in texts])
                # v(empty), the offset, is asked for with LIME's samples: the game scores a
                # coalition once, so this costs no row when LIME drew it too.
                values = game(np.concatenate([keep, empty]))[:-1]
                return values[:, None]  # (N, 1): one "class", the reward

            explanation = self.explainer.explain_instance(
                " ".join(f"t{k}" for k in range(T)),
                classifier,
                labels=(0,),
                num_features=T,
                num_samples=self.num_samples,
            )
            for k, weight in explanation.local_exp[0]:  # feature k = word k = token k
                credits[i, k] = float(weight)
            empty_values[i] = float(game(empty)[0])  # from the game's memo: no new row
        self._empty_values = (batch, empty_values)
        return credits

    def offsets(self, batch: RolloutBatch) -> torch.Tensor:
        """v(empty) per response, (B,): every response token masked. Kept by `_credits` for
        the batch it last saw; any other batch's are scored here, in one scorer call."""
        kept_for, values = self._empty_values
        if kept_for is batch:
            return values
        empty = [torch.zeros(1, int(n), dtype=torch.bool) for n in batch.lengths]
        return torch.cat(self.scorer.coalition_values(batch, empty))
