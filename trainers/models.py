"""The networks of a PPO run: sampling and scoring with the policy, the value model, the
reward model placed on the run's device, and `Run`, which holds them with the other pieces
of one run.

Sequences are laid out as TRL lays them out: prompts left-padded to width P, responses
right-padded to width T, `query_responses` = (B, P + T). Logits at positions P-1 .. P+T-2
predict the response tokens; the value of the state before response token t is read at
position P-1+t.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from shaping.precision import native_bf16
from shaping.reward_model import HasStates, HFRewardModel, NoStatesError, RewardModel, in_dtype
from shaping.scorer import RewardScorer
from shaping.shaper import Shaper
from trainers.config import ConfigError, PPOConfig, ShapingConfig, TrainConfig
from trainers.tasks.base import Task


@dataclass
class Sequences:
    """Prompts and the responses sampled for them, on the run's device."""

    query_responses: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T) 0 on left and right padding
    context_length: int  # P

    @property
    def responses(self) -> torch.Tensor:  # (B, T)
        return self.query_responses[:, self.context_length :]

    @property
    def mask(self) -> torch.Tensor:  # (B, T) 1 up to and including a response's EOS
        return self.attention_mask[:, self.context_length :]

    def response_lists(self) -> list[list[int]]:
        lengths = self.mask.sum(1).tolist()
        return [r[:n] for r, n in zip(self.responses.tolist(), lengths, strict=True)]

    def select(self, idx: torch.Tensor) -> Sequences:
        return Sequences(self.query_responses[idx], self.attention_mask[idx], self.context_length)


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO's ratio compares log-probabilities of two forward passes: no dropout noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` numbers them."""
    return (attention_mask.cumsum(1) - 1).clamp_min(0)


def pad_left(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample(
    policy: PreTrainedModel,
    prompts: list[list[int]],
    generation: GenerationConfig,
    device: torch.device,
) -> Sequences:
    """One response per prompt; a response ends at its first EOS (kept: it is an action),
    every token after it is padding. A response always has at least one token."""
    pad_id, eos_id = generation.pad_token_id, generation.eos_token_id
    ids, mask = pad_left(prompts, pad_id, device)
    P = ids.shape[1]
    out = policy.generate(  # type: ignore[operator]
        input_ids=ids, attention_mask=mask, generation_config=generation
    )
    responses = out[:, P:]  # (B, T')
    if eos_id is None:
        response_mask = torch.ones_like(responses)
    else:
        is_eos = (responses == eos_id).long()
        after_eos = (is_eos.cumsum(1) - is_eos) > 0  # strictly after the first EOS
        response_mask = (~after_eos).long()
        responses = responses.masked_fill(after_eos, pad_id)
    T = int(response_mask.sum(1).max())  # drop columns that are padding in every row
    return Sequences(
        torch.cat([ids, responses[:, :T]], dim=1),
        torch.cat([mask, response_mask[:, :T]], dim=1),
        P,
    )


def generation_config(
    eos_id: int | None, pad_id: int, max_new_tokens: int, temperature: float, greedy: bool
) -> GenerationConfig:
    """Plain ancestral sampling at `temperature` (no top-k or top-p: PPO's log-probabilities
    must be those of the distribution the tokens were drawn from), or greedy decoding."""
    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        top_k=0,
        top_p=1.0,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **sampling,
    )


def response_logits(policy: PreTrainedModel, seqs: Sequences, temperature: float) -> torch.Tensor:
    """Logits of the policy's next-token distribution at each response position: (B, T, V)."""
    T = seqs.query_responses.shape[1] - seqs.context_length
    # Models that can skip the LM head on the prompt positions are asked to.
    keeps = "logits_to_keep" in inspect.signature(policy.forward).parameters
    keep = {"logits_to_keep": T + 1} if keeps else {}
    out = policy(
        input_ids=seqs.query_responses,
        attention_mask=seqs.attention_mask,
        position_ids=position_ids(seqs.attention_mask),
        use_cache=False,
        **keep,
    )
    return out.logits[:, -(T + 1) : -1] / temperature


class ValueModel(torch.nn.Module):
    """V(s_t): a transformer backbone and a scalar head read at every position."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, seqs: Sequences) -> torch.Tensor:
        """(B, T): the value of the state before each response token."""
        hidden = self.backbone(
            input_ids=seqs.query_responses,
            attention_mask=seqs.attention_mask,
            position_ids=position_ids(seqs.attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, P + T, H)
        P = seqs.context_length
        return self.head(hidden[:, P - 1 : -1]).squeeze(-1).float()


def _fresh_head(backbone: PreTrainedModel) -> torch.nn.Linear:
    config = backbone.config
    head = torch.nn.Linear(config.hidden_size, 1)
    torch.nn.init.normal_(head.weight, std=getattr(config, "initializer_range", 0.02))
    torch.nn.init.zeros_(head.bias)
    return head


def make_value_model(ppo: PPOConfig, task: Task, policy: PreTrainedModel) -> ValueModel:
    """A copy of the policy's backbone with a fresh head, or of the reward model's with its
    score head (or a fresh one), per `ppo.critic_init`."""
    if ppo.critic_init == "policy":
        backbone = copy.deepcopy(_backbone(policy))
        return ValueModel(backbone, _fresh_head(backbone))
    rm = task.load_reward_model()
    model = getattr(rm, "model", None)
    if not isinstance(model, PreTrainedModel) or not isinstance(
        getattr(model, "score", None), torch.nn.Linear
    ):
        raise ConfigError(
            f"ppo.critic_init='reward_model' needs a transformer reward model with a `score` "
            f"head (a decoder *ForSequenceClassification); task {task.name!r} has a "
            f"{type(rm).__name__}. Use ppo.critic_init='policy'."
        )
    if rm.tokenizer.get_vocab() != task.tokenizer.get_vocab():
        raise ConfigError(
            "ppo.critic_init='reward_model' needs the reward model to read the policy's "
            f"tokens; task {task.name!r} gives them different tokenizers. Use "
            "ppo.critic_init='policy'."
        )
    backbone = copy.deepcopy(_backbone(model))
    head = copy.deepcopy(model.score) if ppo.critic_reward_head else _fresh_head(backbone)
    assert isinstance(head, torch.nn.Linear)
    return ValueModel(backbone, head)


def _backbone(model: PreTrainedModel) -> PreTrainedModel:
    """The transformer under a model's head (GPT-2's `transformer`, Llama's `model`, ...)."""
    base = model.base_model
    assert isinstance(base, PreTrainedModel)
    return base


def resolve_device(name: str) -> torch.device:
    """`TrainConfig.device` as a torch device: "auto" is CUDA where there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} but MPS is not available here; use 'cpu' or 'auto'")
    return device


class DeviceRewardModel:
    """The task's reward model, moved to `device`: the scorer builds its rows on the CPU
    and this hands them to the model where it lives."""

    def __init__(self, rm: RewardModel, device: torch.device) -> None:
        if isinstance(rm, torch.nn.Module):
            rm.to(device)
        elif isinstance(rm, HFRewardModel):
            rm.model.to(device)
        elif device.type != "cpu":
            raise ConfigError(
                f"device={str(device)!r}: the reward model ({type(rm).__name__}) cannot be "
                "moved off the CPU; use device='cpu'"
            )
        self.rm, self.device = rm, device
        self.tokenizer = rm.tokenizer
        self.mask_token_id = rm.mask_token_id
        self.causal = rm.causal
        self.gives_states = isinstance(rm, HasStates)

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.scores(ids.to(self.device), mask.to(self.device))

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.prefix_scores(ids.to(self.device), mask.to(self.device))

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.attentions(ids.to(self.device), mask.to(self.device))

    def scores_and_states(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.rm, HasStates):
            raise NoStatesError(self.rm)
        return self.rm.scores_and_states(ids.to(self.device), mask.to(self.device))


def build_shaper(
    rm: RewardModel,
    shaping: ShapingConfig,
    options: Mapping[str, Mapping[str, Any]],
    policy_tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
) -> Shaper:
    """The shaper over `rm` on `device` (its scorer is `shaper.scorer`): masked variants
    scored by a bfloat16 copy when `shaping` asks (or, with "auto", where `device` computes
    in bf16 natively), batches read in `policy_tokenizer`'s ids. The inner run builds its
    shaper here, and so does a shape exported to another trainer."""
    coalition_rm = None
    if coalition_dtype(shaping, rm, device) == torch.bfloat16:
        try:
            coalition_rm = DeviceRewardModel(in_dtype(rm, torch.bfloat16), device)
        except ValueError as e:
            raise ConfigError(f"shaping.coalition_dtype: {e}") from e
    scorer = RewardScorer(
        DeviceRewardModel(rm, device),
        rows_per_forward=shaping.rows_per_forward,
        policy_tokenizer=policy_tokenizer,
        coalition_rm=coalition_rm,
    )
    return Shaper(scorer, shaping.weights, options)


def coalition_dtype(shaping: ShapingConfig, rm: RewardModel, device: torch.device) -> torch.dtype:
    """The dtype of the RM copy that scores masked variants; "auto" picks bfloat16 for a
    Hugging Face RM on hardware with native bf16, float32 otherwise."""
    if shaping.coalition_dtype == "auto":
        native = isinstance(rm, HFRewardModel) and native_bf16(device)
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if shaping.coalition_dtype == "bfloat16" else torch.float32


@dataclass(kw_only=True)
class Run:
    """The networks and the pieces of one run, as `trainers.ppo.build_run` builds them."""

    config: TrainConfig
    task: Task
    device: torch.device
    policy: PreTrainedModel
    ref_policy: PreTrainedModel
    """A frozen copy of the policy at the start: the KL penalty's reference."""
    value: ValueModel
    optimizer: torch.optim.Optimizer
    """One Adam over the policy's and the value model's parameters."""
    scorer: RewardScorer
    shaper: Shaper
    sampling: GenerationConfig
    evaluation: GenerationConfig
    train_prompts: list[list[int]]
    eval_prompts: list[list[int]]

    @property
    def pad_id(self) -> int:
        return int(self.sampling.pad_token_id)
