import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, ViTConfig

from trainers.tasks import TaskError, make_task
from trainers.tasks.synthetic import word_tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    tokenizer = word_tokenizer(20)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    GPT2ForSequenceClassification(
        GPT2Config(**{**config.to_dict(), "num_labels": 1})
    ).save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    GPT2ForSequenceClassification(
        GPT2Config(**{**config.to_dict(), "num_labels": 2})
    ).save_pretrained(root / "rm2")
    tokenizer.save_pretrained(root / "rm2")
    ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    ).save_pretrained(root / "vit")
    (root / "vit" / "model.safetensors").write_bytes(b"")
    (root / "empty").mkdir()
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"prompt": f"w{i % 20} w{(i * 7) % 20}"}) for i in range(40)) + "\n"
    )
    (root / "prompts.csv").write_text("id,text\n1,w1 w2\n2,\n3,w3 w4 w5\n")
    return {"root": root, "policy": root / "policy", "rm": root / "rm", "prompts": prompts}


def test_loads_user_models(models: dict[str, Path], tmp_path: Path) -> None:
    task = make_task(
        "hf",
        tmp_path,
        policy=str(models["policy"]),
        reward_model=str(models["rm"]),
        prompts=str(models["prompts"]),
        eval_prompts=8,
    )
    assert len(task.prompts("eval")) == 8 and len(task.prompts("train")) == 32
    policy = task.load_policy()
    rm = task.load_reward_model()
    assert rm.causal and rm.mask_token_id == task.tokenizer.mask_token_id
    ids = torch.tensor([task.prompts("train")[0]])
    with torch.no_grad():
        assert policy(ids).logits.shape[-1] == len(task.tokenizer)
        assert rm.scores(ids, torch.ones_like(ids)).shape == (1,)
    assert task.info().details["same_tokenizer"] is True


def test_csv_prompts_skip_empty_rows(models: dict[str, Path], tmp_path: Path) -> None:
    task = make_task(
        "hf",
        tmp_path,
        policy=str(models["policy"]),
        reward_model=str(models["rm"]),
        prompts=str(models["root"] / "prompts.csv"),
    )
    assert len(task.prompts("train")) + len(task.prompts("eval")) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policy": "missing-dir"}, "policy directory .* does not exist"),
        ({"policy": "empty"}, "no config.json"),
        ({"policy": "vit"}, "'vit' model, which AutoModelForCausalLM cannot load"),
        ({"reward_model": "vit"}, "'vit' model, which AutoModelForSequenceClassification"),
        ({"reward_model": "rm2"}, "2 outputs"),
        ({"prompts": "nope.jsonl"}, "prompt file .* does not exist"),
    ],
)
def test_bad_paths_and_models(
    models: dict[str, Path], tmp_path: Path, change: dict, message: str
) -> None:
    options = {
        "policy": str(models["policy"]),
        "reward_model": str(models["rm"]),
        "prompts": str(models["prompts"]),
    }
    options.update({k: str(models["root"] / v) for k, v in change.items()})
    with pytest.raises(TaskError, match=message):
        make_task("hf", tmp_path, **options)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", '{"other": "x"}\n{"prompt": ""}\n', "no usable rows \\(2 read\\)"),
        ("p.jsonl", "{broken\n", "cannot be parsed"),
        ("p.jsonl", "[1, 2]\n", "expected a JSON object"),
        ("p.csv", "id,label\n1,2\n", "no usable rows"),
        ("p.txt", "hello\n", "unknown format '.txt'"),
    ],
)
def test_bad_prompt_files(
    models: dict[str, Path], tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TaskError, match=message):
        make_task(
            "hf",
            tmp_path,
            policy=str(models["policy"]),
            reward_model=str(models["rm"]),
            prompts=str(path),
        )


def test_required_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(
        TaskError, match=r"needs option\(s\) \['policy', 'prompts', 'reward_model'\]"
    ):
        make_task("hf", tmp_path)


def test_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"unknown task 'nope'.*hf.*imdb-sentiment.*synthetic"):
        make_task("nope", tmp_path)


def _copy_models(models: dict[str, Path], tmp_path: Path) -> dict[str, str]:
    import shutil

    for role in ("policy", "rm"):
        shutil.copytree(models[role], tmp_path / role)
    return {
        "policy": str(tmp_path / "policy"),
        "reward_model": str(tmp_path / "rm"),
        "prompts": str(models["prompts"]),
    }


def test_a_folder_without_tokenizer_files_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    options = _copy_models(models, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "policy" / name).unlink(missing_ok=True)
    with pytest.raises(TaskError, match=r"policy directory .*policy' has no tokenizer"):
        make_task("hf", tmp_path, **options)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "are truncated: the header lists"),
        (lambda data: data[:4], "are not a readable safetensors file .it has 4 bytes"),
        (lambda data: (10**12).to_bytes(8, "little") + data[8:], "are not a .* header length"),
        (lambda data: data[:8] + b"{not json" + data[17:], "are not a readable safetensors"),
    ],
)
def test_damaged_safetensors_are_named_before_loading(
    models: dict[str, Path], tmp_path: Path, damage: Any, message: str
) -> None:
    options = _copy_models(models, tmp_path)
    weights = tmp_path / "rm" / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(TaskError, match=f"reward model weights .*model.safetensors' {message}"):
        make_task("hf", tmp_path, **options)


def test_max_response_length_comes_from_the_positions(
    models: dict[str, Path], tmp_path: Path
) -> None:
    task = make_task("hf", tmp_path, **_copy_models(models, tmp_path))
    longest = max(len(p) for split in ("train", "eval") for p in task.prompts(split))
    assert task.max_response_length() == 64 - longest  # n_positions=64 in the fixture
