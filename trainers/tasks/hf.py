"""User-supplied models: a causal-LM policy, a sequence-classification RM, a prompt file.

Everything loads from local directories with `trust_remote_code=False`; nothing is fetched.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from shaping.reward_model import HFRewardModel
from trainers.tasks.base import (
    RewardModelFiles,
    Split,
    Task,
    TaskError,
    TaskInfo,
    check_response_length,
)

PROMPT_FIELDS = ("prompt", "text", "query")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")
"""One of these makes a folder's tokenizer loadable (fast, BPE, WordPiece, SentencePiece)."""
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
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TaskError(f"{role} config in {str(folder)!r} cannot be read: {e}") from e
    if config.model_type not in mapping:
        raise TaskError(
            f"{role} in {str(folder)!r} is a {config.model_type!r} model, which "
            f"{auto_class} cannot load; give a model of a type it supports"
        )
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights, role)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TaskError(
            f"{role} directory {str(folder)!r} has no tokenizer (looked for "
            f"{', '.join(TOKENIZER_FILES)}); save it beside the model with "
            "`tokenizer.save_pretrained`"
        )
    return folder, config


def _positions(config: PretrainedConfig) -> int | None:
    """The longest row a model's position embeddings take, where its config says."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_safetensors(path: Path, role: str) -> None:
    """Read a safetensors file's header and check that the file holds every tensor it lists:
    a truncated or corrupt file is named here, not when every trial fails to load it."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"it has {len(head)} bytes, fewer than a header's 8")
            n = struct.unpack("<Q", head)[0]
            if not 0 < n <= min(size - 8, 100 * 2**20):
                raise ValueError(f"its header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as e:
        raise TaskError(
            f"{role} weights {str(path)!r} are not a readable safetensors file ({e}); "
            "save the model again with `save_pretrained`"
        ) from None
    if 8 + n + max(ends, default=0) > size:
        raise TaskError(
            f"{role} weights {str(path)!r} are truncated: the header lists "
            f"{8 + n + max(ends)} bytes, the file has {size}; copy or save it again"
        )


def _load_tokenizer(folder: Path, role: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            folder, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise TaskError(f"{role} tokenizer in {str(folder)!r} cannot be loaded: {e}") from e
    return tokenizer


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
        self.policy_dir, policy_config = _model_dir(
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
        self.tokenizer = _load_tokenizer(self.policy_dir, "policy")
        self.rm_tokenizer = _load_tokenizer(self.rm_dir, "reward model")
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
        positions = [_positions(c) for c in (policy_config, rm_config)]
        longest = max(len(p) for rows in self._prompts.values() for p in rows)
        known = [n for n in positions if n is not None]
        # The RM may count the same text in more tokens than the policy does: a limit from
        # its positions is an estimate, and a run still fails cleanly past it.
        self._max_response = min(known) - longest if known else None

    def max_response_length(self) -> int | None:
        return self._max_response

    def load_policy(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(
            self.policy_dir, local_files_only=True, trust_remote_code=False
        ).eval()

    def load_reward_model(self) -> HFRewardModel:
        model = AutoModelForSequenceClassification.from_pretrained(
            self.rm_dir, local_files_only=True, trust_remote_code=False
        )
        return HFRewardModel(model, self.rm_tokenizer, self.mask_token_id)

    def reward_model_files(self) -> RewardModelFiles:
        return RewardModelFiles(self.rm_dir, self.rm_dir, self.mask_token_id)

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
