"""User-supplied models: a causal-LM policy, a sequence-classification RM, a prompt file.

Everything loads from local directories with `trust_remote_code=False`; nothing is fetched.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from shaping.reward_model import HFRewardModel
from trainers.tasks.base import Split, Task, TaskError, TaskInfo, check_response_length

PROMPT_FIELDS = ("prompt", "text", "query")
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _model_dir(
    path: str | Path, role: str, mapping: dict[str, str], auto_class: str
) -> tuple[Path, PretrainedConfig]:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TaskError(
            f"{role} directory {str(folder)!r} does not exist; give the path of a "
            "folder written by `save_pretrained`"
        )
    if not (folder / "config.json").is_file():
        raise TaskError(
            f"{role} directory {str(folder)!r} has no config.json; is it a "
            "Hugging Face model folder (written by `save_pretrained`)?"
        )
    if not any((folder / w).is_file() for w in _WEIGHTS):
        raise TaskError(
            f"{role} directory {str(folder)!r} has no weights (looked for {', '.join(_WEIGHTS)})"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise TaskError(f"{role} config in {str(folder)!r} cannot be read: {e}") from e
    if config.model_type not in mapping:
        raise TaskError(
            f"{role} in {str(folder)!r} is a {config.model_type!r} model, which "
            f"{auto_class} cannot load; give a model of a type it supports"
        )
    return folder, config


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from JSONL (one object per line) or CSV (a header row), first of the fields
    `prompt`, `text`, `query` present; empty rows are skipped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TaskError(f"prompt file {str(file)!r} does not exist")
    rows: list[dict[str, object]] = []
    try:
        if file.suffix.lower() == ".csv":
            with open(file, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        elif file.suffix.lower() in (".jsonl", ".json"):
            with open(file, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise TaskError(
                                f"{file}:{n}: expected a JSON object per line, got {type(row).__name__}"
                            )
                        rows.append(row)
        else:
            raise TaskError(
                f"prompt file {str(file)!r}: unknown format {file.suffix!r}; use .jsonl or .csv"
            )
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise TaskError(f"prompt file {str(file)!r} cannot be parsed: {e}") from e
    prompts = []
    for row in rows:
        field = next((f for f in PROMPT_FIELDS if f in row), None)
        value = row.get(field) if field else None
        if isinstance(value, str) and value.strip():
            prompts.append(value)
    if not prompts:
        raise TaskError(
            f"prompt file {str(file)!r} has no usable rows ({len(rows)} read): each "
            f"row needs a non-empty string field, one of {', '.join(PROMPT_FIELDS)}"
        )
    return prompts


class HFTask(Task):
    name = "hf"

    def __init__(
        self,
        policy: str,
        reward_model: str,
        prompts: str,
        response_length: int = 24,
        max_prompt_tokens: int = 256,
        eval_prompts: int = 64,
        mask_token_id: int | None = None,
        seed: int = 0,
    ) -> None:
        self.policy_dir, _ = _model_dir(
            policy, "policy", MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "AutoModelForCausalLM"
        )
        self.rm_dir, rm_config = _model_dir(
            reward_model,
            "reward model",
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
            "AutoModelForSequenceClassification",
        )
        if rm_config.num_labels != 1:
            raise TaskError(
                f"reward model in {str(self.rm_dir)!r} has {rm_config.num_labels} "
                "outputs; a reward model has one (num_labels=1)"
            )
        self.response_length = check_response_length(response_length)
        self.tokenizer = AutoTokenizer.from_pretrained(self.policy_dir, local_files_only=True)
        self.rm_tokenizer = AutoTokenizer.from_pretrained(self.rm_dir, local_files_only=True)
        self.mask_token_id = mask_token_id
        texts = read_prompts(prompts)
        ids = self.tokenizer(texts)["input_ids"]
        ids = [r[-max_prompt_tokens:] for r in ids if r]  # keep a prompt's end: it leads into y
        order = np.random.default_rng(seed).permutation(len(ids))
        n_eval = min(eval_prompts, len(ids) // 2) if len(ids) > 1 else 0
        self._prompts = {
            "eval": [ids[i] for i in order[:n_eval]] or [ids[order[0]]],
            "train": [ids[i] for i in order[n_eval:]],
        }
        self.prompt_file = str(prompts)

    def load_policy(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(
            self.policy_dir, local_files_only=True, trust_remote_code=False
        ).eval()

    def load_reward_model(self) -> HFRewardModel:
        model = AutoModelForSequenceClassification.from_pretrained(
            self.rm_dir, local_files_only=True, trust_remote_code=False
        )
        return HFRewardModel(model, self.rm_tokenizer, self.mask_token_id)

    def prompts(self, split: Split) -> list[list[int]]:
        return [list(p) for p in self._prompts[split]]

    def info(self) -> TaskInfo:
        return TaskInfo(
            self.name,
            "user-supplied policy, reward model and prompts",
            {
                "policy": str(self.policy_dir),
                "reward_model": str(self.rm_dir),
                "prompts": self.prompt_file,
                "train_prompts": len(self._prompts["train"]),
                "eval_prompts": len(self._prompts["eval"]),
                "response_length": self.response_length,
                "same_tokenizer": self.tokenizer.get_vocab() == self.rm_tokenizer.get_vocab(),
            },
        )
