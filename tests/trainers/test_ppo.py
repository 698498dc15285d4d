import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from shaping.batch import RolloutBatch
from trainers import explainer
from trainers.checkpoint import CHECKPOINT
from trainers.config import ConfigError, PPOConfig, ShapingConfig, TaskConfig, TrainConfig
from trainers.models import response_logits, sample
from trainers.ppo import Hooks, TrainingError, build_run, token_rewards, train
from trainers.tasks import make_task
from trainers.tasks.imdb.prepare import Prepared
from trainers.tasks.synthetic import SyntheticTask

SYNTHETIC = {"n_words": 16, "response_length": 6, "train_prompts": 64, "eval_prompts": 8}
NAMESPACES = ("objective/", "policy/", "losses/", "shaping/", "cost/", "eval/")


def synthetic() -> SyntheticTask:
    return SyntheticTask(**SYNTHETIC)


def config(
    weights: dict[str, float] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    run_dir: Path | None = None,
    **changes: Any,
) -> TrainConfig:
    ppo = PPOConfig(rollout_batch=8, minibatch=4, epochs=2, lr=3e-3, **changes.pop("ppo", {}))
    return TrainConfig(
        task=TaskConfig("synthetic", SYNTHETIC),
        shaping=ShapingConfig(weights or {"red": 0.5, "sparse": 0.5}, options or {}),
        ppo=ppo,
        **{
            "steps": 2,
            "eval_interval": 1,
            "eval_prompts": 8,
            "device": "cpu",
            "torch_threads": 1,  # tiny models: one thread beats two busy ones by far
            "run_dir": str(run_dir) if run_dir else None,
            **changes,
        },
    )


def finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def test_smoke_run_changes_weights_and_reports_finite_metrics(tmp_path: Path) -> None:
    reports: list[tuple[int, dict[str, float]]] = []
    task = synthetic()
    hooks = Hooks(report=lambda s, m: reports.append((s, m)))
    result = train(config(run_dir=tmp_path), task, hooks)

    assert [s for s, _ in reports] == [0, 1, 2]
    assert not result.stopped_early and result.steps == 2
    assert all(finite(m) for _, m in reports) and finite(result.final)
    assert all(k.startswith(NAMESPACES) for _, m in reports for k in m)
    assert set(result.curves) == {0, 1, 2} and all(finite(c) for c in result.curves.values())
    assert result.curves[0]["eval/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is the ref
    assert result.curves[2]["eval/kl"] > 0
    assert len(result.samples[2]) == 3 and all(isinstance(t, str) for t in result.samples[2])
    step = reports[2][1]
    assert {"losses/policy", "losses/value", "policy/approxkl", "shaping/offset_mean"} <= set(step)
    assert step["cost/responses"] == 16  # totals over the run so far
    # One row per response: R and RED's prefix scores come from the same pass.
    assert step["cost/rm_rows_per_response"] == pytest.approx(1.0)
    assert {"rollout", "logprobs", "score", "shape", "update", "evaluate"} <= set(
        result.phase_seconds
    )
    assert result.final["objective/eval_rm_auc"] == pytest.approx(
        (
            result.curves[0]["eval/rm_mean"]
            + 2 * result.curves[1]["eval/rm_mean"]
            + result.curves[2]["eval/rm_mean"]
        )
        / 4
    )

    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    start = task.load_policy().state_dict()
    assert any(not torch.equal(saved["policy"][k], v) for k, v in start.items())
    # The value model began as a copy of the policy's backbone; it has been trained too.
    assert any(
        not torch.equal(saved["value"][f"backbone.{k.removeprefix('transformer.')}"], v)
        for k, v in start.items()
        if k.startswith("transformer.")
    )
    assert (tmp_path / "result.json").is_file()


def test_every_run_evaluates_with_the_same_noise_whatever_its_seed_or_batch() -> None:
    # Common random numbers: the initial policy is the same in every run, so its held-out
    # evaluation must be too, or evaluation noise is charged to every comparison of runs.
    task = synthetic()
    configs = [config(steps=1, seed=seed) for seed in (0, 1, 2)]
    configs[2] = replace(configs[2], ppo=replace(configs[2].ppo, rollout_batch=4, minibatch=4))
    runs = [train(c, task) for c in configs]
    first = [r.curves[0] for r in runs]
    assert first[0] == first[1] == first[2]
    assert runs[0].curves[1] != runs[1].curves[1]  # training itself still differs by seed


def test_rollout_masks_after_eos_and_logprobs_ignore_padding() -> None:
    task = synthetic()
    run = build_run(config(), task)
    prompts = [p[: 2 + i % 4] for i, p in enumerate(task.prompts("train")[:32])]  # ragged
    torch.manual_seed(0)
    seqs = sample(run.policy, prompts, run.sampling, run.device)
    eos = task.tokenizer.eos_token_id
    lengths = seqs.mask.sum(1)
    assert (lengths >= 1).all() and lengths.max() == seqs.responses.shape[1]
    ended = [r for r in seqs.response_lists() if r[-1] == eos]
    assert ended and all(eos not in r[:-1] for r in seqs.response_lists())
    assert any(len(r) < 6 for r in ended)  # responses that stop early are cut there
    with torch.no_grad():
        logits = response_logits(run.policy, seqs, temperature=0.7)
        for i in (0, 1, 3):  # each row alone, unpadded, gives the same next-token logits
            row = prompts[i] + seqs.response_lists()[i]
            alone = run.policy(input_ids=torch.tensor([row])).logits[0] / 0.7
            n = int(lengths[i])
            torch.testing.assert_close(
                logits[i, :n], alone[len(prompts[i]) - 1 : -1], rtol=1e-4, atol=1e-4
            )


def test_sparse_weight_reproduces_the_classic_reward_placement() -> None:
    """TRL's sparse RLHF reward: -beta * KL_t everywhere, plus R on the last response token."""
    task = synthetic()
    run = build_run(config({"sparse": 1.0}, ppo={"kl_coef": 0.1}), task)
    prompts = task.prompts("train")[:32]
    torch.manual_seed(1)
    seqs = sample(run.policy, prompts, run.sampling, run.device)
    mask, responses = seqs.mask, seqs.response_lists()
    assert len({len(r) for r in responses}) > 1  # ragged: the last token moves
    scores = run.scorer.score_responses(prompts, responses)
    batch = RolloutBatch.from_lists(prompts, responses, scores.tolist(), run.pad_id)
    kl = torch.rand(mask.shape, generator=torch.Generator().manual_seed(2)) * mask
    _, rewards = token_rewards(run, batch, kl, mask, step=1)

    classic = -0.1 * kl
    for i, r in enumerate(responses):
        classic[i, len(r) - 1] += scores[i]
    torch.testing.assert_close(rewards, classic)


def test_imdb_tiny_run_with_the_reward_model_critic(
    tiny_home: Path, tiny_prepared: Prepared
) -> None:
    options = {"size": "tiny", "eval_prompts": 8, "response_length": 8}
    task = make_task("imdb-sentiment", tiny_home, **options)
    cfg = TrainConfig(
        task=TaskConfig("imdb-sentiment", options),
        shaping=ShapingConfig({"red": 0.5, "sparse": 0.5}),
        ppo=PPOConfig(rollout_batch=8, minibatch=4, epochs=1, critic_init="reward_model"),
        steps=2,
        eval_interval=2,
        eval_prompts=8,
        device="cpu",
        torch_threads=1,
    )
    run = build_run(cfg, task)
    rm_head = task.load_reward_model().model.score.weight
    torch.testing.assert_close(run.value.head.weight, rm_head)  # V starts from the RM

    result = train(cfg, task)
    assert set(result.curves) == {0, 2}
    assert all(finite(c) for c in result.curves.values()) and finite(result.final)
    assert -1.0 <= result.curves[2]["eval/gold_mean"] <= 1.0  # VADER judged the same texts
    assert 0 < result.final["eval/length"] <= 8
    first = task.tokenizer.decode(task.prompts("eval")[0], skip_special_tokens=True)
    assert result.samples[2][0].startswith(first)
    assert result.costs["cost/rm_rows_per_response"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["shapley", "amortized"])
def test_resume_after_a_stop_equals_the_uninterrupted_run(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sampled Shapley values (more players than max_exact_players) draw from the
    # attributor's own RNG: the resumed run must continue that stream as well; amortized
    # credit, its network, optimizer, replay buffer, pairs and audit error too.
    cfg = config(
        {method: 0.5, "sparse": 0.5},
        {
            "shapley": {"max_exact_players": 2, "permutations": 4},
            # Its coalitions, its network's online training and its audits (by the sampled
            # Shapley above) all draw from its own generator.
            "amortized": {"pairs": 2, "audit_every": 2},
        },
        steps=4,
        eval_interval=2,
        checkpoint_interval=3,
    )
    # Amortized starts from a (small) explainer, as a study's runs do.
    monkeypatch.setattr(explainer, "DEFAULT", explainer.ExplainerSettings(96, 2, epochs=2))
    explainers = tmp_path / "explainers"
    whole = train(replace(cfg, run_dir=str(tmp_path / "whole")), synthetic(), None, explainers)

    reported: list[int] = []
    hooks = Hooks(report=lambda s, m: reported.append(s), should_stop=lambda: len(reported) > 2)
    part = train(replace(cfg, run_dir=str(tmp_path / "part")), synthetic(), hooks, explainers)
    assert part.stopped_early and part.steps == 2 and reported == [0, 1, 2]
    resumed = train(replace(cfg, run_dir=str(tmp_path / "part")), synthetic(), None, explainers)
    assert not resumed.stopped_early and resumed.steps == 4

    assert set(resumed.curves) == set(whole.curves) == {0, 2, 4}
    for step in whole.curves:
        assert resumed.curves[step]["eval/rm_mean"] == pytest.approx(
            whole.curves[step]["eval/rm_mean"], abs=1e-5
        )
    assert resumed.costs["cost/rm_rows"] == whole.costs["cost/rm_rows"]
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "part" / CHECKPOINT, weights_only=True)
    for part_name in ("policy", "value"):
        for key, value in a[part_name].items():
            torch.testing.assert_close(b[part_name][key], value, rtol=1e-5, atol=1e-6)
    # A finished run asked again returns its result without training.
    again = train(replace(cfg, run_dir=str(tmp_path / "part")), synthetic())
    assert again.steps == 4 and again.curves == resumed.curves


class NaNAfterFlag:
    """The synthetic RM, returning NaN once `poisoned` is set."""

    def __init__(self, rm: Any) -> None:
        self.rm, self.poisoned = rm, False
        self.tokenizer, self.mask_token_id, self.causal = rm.tokenizer, rm.mask_token_id, True

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.rm.scores(ids, mask)
        return scores * float("nan") if self.poisoned else scores

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.rm.prefix_scores(ids, mask)
        return scores * float("nan") if self.poisoned else scores

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.attentions(ids, mask)


def test_a_nan_reward_stops_the_run_naming_step_and_phase() -> None:
    task = synthetic()
    rm = NaNAfterFlag(task.load_reward_model())
    task.load_reward_model = lambda: rm  # type: ignore[method-assign]

    def report(step: int, metrics: dict[str, float]) -> None:
        rm.poisoned = step == 1

    with pytest.raises(TrainingError, match=r"step 2, phase 'score': .*nan.* response 0") as e:
        train(config(steps=3), task, Hooks(report=report))
    assert (e.value.step, e.value.phase) == (2, "score")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ShapingConfig({"sparse": 0.5}), "shaping.weights.*sum to 1"),
        (lambda: ShapingConfig({"magic": 1.0}), r"unknown method.*'magic'.*choose from"),
        (
            lambda: ShapingConfig({"sparse": 1.0}, {"red": {"colour": 1}}),
            "shaping.options.red.*keep_offset",
        ),
        (
            lambda: ShapingConfig({"sparse": 1.0}, coalition_dtype="float16"),  # type: ignore[arg-type]
            "shaping.coalition_dtype='float16'.*auto, float32 or bfloat16",
        ),
        (lambda: PPOConfig(rollout_batch=10, minibatch=4), "ppo.minibatch=4.*divide"),
        (lambda: PPOConfig(rollout_batch=1, minibatch=1), "ppo.rollout_batch=1.*at least 2"),
        (lambda: PPOConfig(kl_estimator="k2"), r"ppo.kl_estimator='k2'.*\['k1', 'k3'\]"),  # type: ignore[arg-type]
        (
            lambda: PPOConfig(critic_init="value"),
            "ppo.critic_init='value'.*'policy', 'reward_model'",
        ),  # type: ignore[arg-type]
        (lambda: PPOConfig(lr=-1.0), r"ppo.lr=-1.0 is invalid; give a number in"),
        (lambda: PPOConfig(gae_lambda=1.5), "ppo.gae_lambda=1.5"),
        (lambda: TrainConfig(device="tpu"), "device='tpu'.*cuda"),
        (lambda: TrainConfig(steps=0), "steps=0.*>= 1"),
        (lambda: TaskConfig("nope"), "task.name='nope'.*imdb-sentiment"),
        (
            lambda: TrainConfig.from_dict({"ppo": {"learning_rate": 1}}),
            r"learning_rate.*valid fields",
        ),
    ],
)
def test_bad_configs_name_the_field_and_the_choices(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_config_round_trips_and_run_time_config_errors(tmp_path: Path) -> None:
    cfg = config({"shapley": 0.7, "sparse": 0.3}, {"shapley": {"unit": "span"}})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ConfigError, match=r"critic_init='reward_model'.*Use ppo.critic_init='policy'"
    ):
        build_run(config(ppo={"critic_init": "reward_model"}), synthetic())
    bf16 = replace(cfg, shaping=replace(cfg.shaping, coalition_dtype="bfloat16"))
    with pytest.raises(ConfigError, match=r"coalition_dtype: .*SyntheticReward.*float32"):
        build_run(bf16, synthetic())
    with pytest.raises(
        ConfigError, match=r"task.name='imdb-sentiment' but the task given is 'synthetic'"
    ):
        build_run(replace(cfg, task=TaskConfig("imdb-sentiment")), synthetic())
    train(config(run_dir=tmp_path, steps=1), synthetic())
    with pytest.raises(ConfigError, match=r"another configuration.*\['seed'\]"):
        train(config(run_dir=tmp_path, steps=1, seed=1), synthetic())
