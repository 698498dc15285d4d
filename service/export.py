"""`shapetune export STUDY --to verl OUT/`: a tuned shape, ready for verl's PPO trainer.

OUT gets `shape.json` (the shape: weights, each method's options with their seeds, how masked
variants are scored, the reward model's folders, where it was tuned), `shapetune_reward.py`
(verl reward managers over it, both interfaces), `verl_config.yaml` (the part of verl's config
that routes rewards through the manager) and a README. OUT is written beside itself and
renamed into place, so an export that fails leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from service.formatting import weights as show_weights
from service.tuning.spec.model import StudySpec
from trainers.explainer import NET, ensure_explainer, explainers_root
from trainers.portable_shape import (
    EXPLAINER_FILE,
    EstimatorError,
    PortableShape,
    ShapeOrigin,
    check_estimator,
)
from trainers.tasks import TaskError, make_task
from trainers.tasks.base import RewardModelFiles

TARGETS = ("verl",)
MODULE = "shapetune_reward.py"
REWARD_LOOP_CLASS = "ShapedRewardManager"
LEGACY_CLASS = "ShapedLegacyRewardManager"
TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "spiece")
"""How the files of a Hugging Face tokenizer begin (a policy's folder holds its weights too)."""


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what to do."""


def portable_shape(
    spec: StudySpec,
    trial: int,
    weights: dict[str, float],
    knobs: dict[str, float],
    home: Path,
    verdict: str = "",
) -> PortableShape:
    """The shape of `trial` as its inner runs used it (seed options fixed to the study's
    first seed), with the task's reward model."""
    config = spec.train_config(weights, knobs, seed=spec.seed)
    try:
        task = make_task(config.task.name, home, **config.task.options)
    except TaskError as e:
        raise ExportError(f"the study's task cannot be loaded here: {e}") from e
    files = task.reward_model_files()
    if files is None:
        raise ExportError(
            f"task {config.task.name!r} scores with a reward function written in torch, not a "
            "Hugging Face model on disk; only a shape over a Hugging Face reward model "
            "(imdb-sentiment, hf) can leave shapetune"
        )
    return PortableShape(
        shaping=replace(config.shaping, options=config.method_options()),
        reward_model=files,
        origin=ShapeOrigin(spec.name, trial, config.task.name, spec.objective, verdict),
    )


def shape_explainer(
    spec: StudySpec, weights: dict[str, float], knobs: dict[str, float], home: Path
) -> Path | None:
    """The explainer file an `amortized` shape starts from (built first if this home has
    none yet: minutes); None for a shape without `amortized`."""
    if weights.get("amortized", 0) <= 0:
        return None
    config = spec.train_config(weights, knobs, seed=spec.seed)
    task = make_task(config.task.name, home, **config.task.options)
    length = config.ppo.response_length or task.response_length
    return ensure_explainer(task, length, explainers_root(home)).folder / NET


def export_verl(
    shape: PortableShape,
    out: Path,
    estimator: str = "gae",
    copy_rm: bool = False,
    explainer: Path | None = None,
) -> list[Path]:
    """Write the export into `out` (new or empty); the files written, relative to it. The
    RM is copied in with `copy_rm`, and whenever its tokenizer lies in another folder; an
    `amortized` shape's `explainer` goes beside shape.json."""
    try:
        check_estimator(estimator)
    except EstimatorError as e:
        raise ExportError(f"--estimator: {e}") from None
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        rm = shape.reward_model
        if copy_rm or rm.tokenizer != rm.model:  # verl loads both from one folder
            _copy_rm(rm, staging / "reward_model")
            rm = RewardModelFiles(out / "reward_model", out / "reward_model", rm.mask_token_id)
            shape = replace(shape, reward_model=rm)
        (staging / "shape.json").write_text(shape.to_json(relative_to=out))
        if explainer is not None:
            shutil.copy2(explainer, staging / EXPLAINER_FILE)
        (staging / MODULE).write_text(_module(shape))
        settings = _settings(shape, out, estimator)
        (staging / "verl_config.yaml").write_text(_config(settings))
        (staging / "README.md").write_text(_readme(shape, settings))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())


def check_out(out: Path) -> Path:
    """`out` resolved, if an export may be written there (a new or empty folder)."""
    out = out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{str(out)!r} exists and is not an empty folder; name a new one")
    return out


def _copy_rm(files: RewardModelFiles, into: Path) -> None:
    """The RM copied to `into` with its tokenizer's files beside its weights: an export that
    travels with its model, in the one folder verl's reward model loads from."""
    shutil.copytree(files.model, into)
    for file in files.tokenizer.iterdir():
        if file.is_file() and file.name.startswith(TOKENIZER_FILES):
            shutil.copy2(file, into / file.name)


def _module(shape: PortableShape) -> str:
    origin = shape.origin
    return f'''"""verl reward managers for the shape tuned by shapetune study {origin.study!r},
trial {origin.trial}. Made by `shapetune export`; the shape is shape.json beside this file
and README.md says how to train with it."""

from pathlib import Path

from trainers.verl_manager import ShapetuneLegacyRewardManager, ShapetuneRewardLoopManager

SHAPE = Path(__file__).resolve().with_name("shape.json")


class {REWARD_LOOP_CLASS}(ShapetuneRewardLoopManager):
    """verl's Reward Loop: reward.reward_manager (source importlib)."""

    shape_file = SHAPE


class {LEGACY_CLASS}(ShapetuneLegacyRewardManager):
    """A batch reward function: manager(data) -> [batch, response_len] rewards."""

    shape_file = SHAPE


def compute_score(**kwargs):
    """verl routes rewards to a reward manager only while a custom reward function is set
    (reward.custom_reward_function); the manager above scores every response itself."""
    raise RuntimeError(
        "shapetune's reward manager scores responses itself; verl called the reward "
        "function instead: set reward.reward_manager as in verl_config.yaml"
    )
'''


def _settings(shape: PortableShape, out: Path, estimator: str) -> dict[str, Any]:
    """The part of verl's config that routes rewards through the manager."""
    module = str(out / MODULE)
    return {
        "algorithm": {"adv_estimator": estimator},
        "reward": {
            "reward_manager": {
                "source": "importlib",
                "name": REWARD_LOOP_CLASS,
                "module": {"path": module},
            },
            "custom_reward_function": {"path": module, "name": "compute_score"},
            "reward_model": {
                "enable": True,
                "enable_resource_pool": False,
                "model_path": str(shape.reward_model.model),
            },
        },
    }


def _config(settings: dict[str, Any]) -> str:
    head = (
        "# The part of verl's PPO config (0.9.1) that routes rewards through shapetune's\n"
        "# manager; merge it into yours or pass it as overrides (README.md).\n"
    )
    return head + yaml.safe_dump(settings, sort_keys=False)


def _overrides(settings: dict[str, Any], prefix: str = "") -> list[str]:
    """The same settings as Hydra's command-line overrides, `a.b.c=value`."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, dict):
            lines += _overrides(value, f"{prefix}{key}.")
        else:
            shown = str(value).lower() if isinstance(value, bool) else value
            lines.append(f"{prefix}{key}={shown}")
    return lines


def _readme(shape: PortableShape, settings: dict[str, Any]) -> str:
    origin, cfg = shape.origin, shape.shaping
    verdict = f"\n{origin.verdict}\n" if origin.verdict else ""
    overrides = [*_overrides(settings), "reward.reward_model.rollout.name=vllm"]
    command = "".join(f"    {line} \\\n" for line in overrides)
    return f"""# A shape tuned by shapetune, for verl

Study `{origin.study}`, trial {origin.trial} (task `{origin.task}`, objective
`{origin.objective}`): weights {show_weights(cfg.weights, 3)}.
{verdict}
- `shape.json`: the shape: weights, each method's options (their seeds fixed), how masked
  variants are scored, and the reward model's folders (relative paths are from this folder).
- `{MODULE}`: verl reward managers over it: `{REWARD_LOOP_CLASS}` (the Reward Loop) and
  `{LEGACY_CLASS}` (a batch reward function).
- `verl_config.yaml`: the config that routes verl's rewards through the manager.

verl needs shapetune importable where its reward workers run (`pip install 'shapetune[verl]'`
installs verl beside it) and this folder at the same path on every node. Train with:

```
python -m verl.trainer.main_ppo \\
{command}    ...your data, actor, critic and trainer settings
```

Why a reward model is enabled: verl 0.9.1 keeps per-token rewards only on its batch reward
path, which its trainer takes with a reward model beside the actor; rewards streamed from
the rollout carry one number per response, and the manager refuses that configuration
rather than train sparse. The advantage estimator must read every token's reward (gae,
reinforce_plus_plus, remax, optimal_token_baseline); estimators that sum a response's rewards
first (grpo, rloo, ...) would see no shape at all. KL in the reward
(`algorithm.use_kl_in_reward`) is subtracted by verl from these rewards, as shapetune's own
PPO does.
"""
