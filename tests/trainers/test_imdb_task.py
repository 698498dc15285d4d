import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trainers.tasks import TaskError, make_task
from trainers.tasks.cache import RECORD, read_record
from trainers.tasks.imdb.config import PrepareConfig
from trainers.tasks.imdb.prepare import STAGES, Prepared, prepare, task_root

Report = tuple[str, int, int, bool]  # (stage, done, total, cached)


class Recorder:
    """An `OnProgress` that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[Report] = []

    def __call__(self, stage: str, done: int, total: int, *, cached: bool = False) -> None:
        self.reports.append((stage, done, total, cached))

    def of(self, stage: str) -> list[Report]:
        return [r for r in self.reports if r[0] == stage]


def test_tiny_prepare_builds_every_stage(tiny_prepared: Prepared) -> None:
    assert set(tiny_prepared.stages) == set(STAGES)
    report = tiny_prepared.report
    assert math.isfinite(report["policy_perplexity_128"]) and report["policy_perplexity_128"] > 1
    for key in ("rm_accuracy_reviews", "rm_accuracy_sentences", "rm_vader_sign_agreement"):
        assert 0.0 <= report[key] <= 1.0
    assert len(report["samples"]) == 3
    assert all(s["continuation"] for s in report["samples"])


def test_models_load_like_any_hugging_face_model(tiny_prepared: Prepared) -> None:
    root = tiny_prepared.root
    tokenizer = AutoTokenizer.from_pretrained(root / "policy")
    assert tokenizer.mask_token == "<|mask|>" and tokenizer.pad_token == "<|pad|>"
    policy = AutoModelForCausalLM.from_pretrained(root / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(root / "reward_model")
    assert rm.config.num_labels == 1
    assert policy.config.vocab_size == rm.config.vocab_size == len(tokenizer)


def test_rm_scores_every_prefix_in_one_pass(tiny_home: Path, tiny_prepared: Prepared) -> None:
    task = make_task("imdb-sentiment", tiny_home, size="tiny")
    rm = task.load_reward_model()
    assert rm.causal
    rows = [[task.tokenizer.bos_token_id, *p[1:]] for p in task.prompts("eval")[:3]]
    rows[1] = rows[1][:5]  # a shorter row: right padding must not change its score
    width = max(map(len, rows))
    ids = torch.full((3, width), task.tokenizer.pad_token_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    with torch.no_grad():
        prefix = rm.prefix_scores(ids, mask)
        pooled = rm.model(input_ids=ids, attention_mask=mask).logits[:, 0]  # HF's own pooling
        alone = rm.prefix_scores(ids[1:2, :5], mask[1:2, :5])
    assert prefix.shape == (3, width)
    torch.testing.assert_close(rm.scores(ids, mask), pooled)
    torch.testing.assert_close(prefix[1, :5], alone[0], rtol=1e-5, atol=1e-5)


def test_second_prepare_is_a_no_op(tiny_home: Path, tiny_prepared: Prepared) -> None:
    again = prepare(tiny_home, PrepareConfig(size="tiny"))
    assert not any(rec.built for rec in again.stages.values())
    assert again.report == tiny_prepared.report


def test_a_build_reports_every_stage_from_zero_up_to_its_total(tmp_path: Path) -> None:
    config = PrepareConfig(size="tiny")
    progress = Recorder()
    prepare(tmp_path, config, on_progress=progress)
    assert list(dict.fromkeys(r[0] for r in progress.reports)) == list(STAGES)  # in order
    for stage in STAGES:
        reports = progress.of(stage)
        (total,) = {r[2] for r in reports}
        assert [r[1] for r in reports] == list(range(total + 1)), stage
        assert not any(r[3] for r in reports), stage
    assert progress.of("policy")[-1][2] == config.model.pretrain_steps
    assert progress.of("reward_model")[-1][2] == config.model.rm_steps


def test_cached_stages_are_reported_once_as_cached(
    tmp_path: Path, tiny_home: Path, tiny_prepared: Prepared
) -> None:
    config = PrepareConfig(size="tiny")
    cached = Recorder()
    prepare(tiny_home, config, on_progress=cached)
    assert cached.reports == [(stage, 1, 1, True) for stage in STAGES]
    # Only the report is missing: the others are reported cached, in order, around its build.
    root = task_root(tmp_path, config)
    shutil.copytree(tiny_prepared.root, root)
    shutil.rmtree(root / "report")
    partly = Recorder()
    prepare(tmp_path, config, on_progress=partly)
    assert partly.reports == [
        *((stage, 1, 1, True) for stage in STAGES[:-1]),
        ("report", 0, 1, False),
        ("report", 1, 1, False),
    ]


def test_a_cached_prepare_loads_no_model_library(tiny_home: Path, tiny_prepared: Prepared) -> None:
    """The no-op path only hashes files: torch and transformers stay unimported."""
    code = (
        "import sys; from pathlib import Path\n"
        "from trainers.tasks.imdb.config import PrepareConfig\n"
        "from trainers.tasks.imdb.prepare import prepare\n"
        f"result = prepare(Path({str(tiny_home)!r}), PrepareConfig(size='tiny'))\n"
        "assert not any(s.built for s in result.stages.values())\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_two_clean_builds_give_identical_weights(tmp_path: Path, tiny_prepared: Prepared) -> None:
    other = prepare(tmp_path, PrepareConfig(size="tiny"))
    for stage in ("tokenizer", "policy", "reward_model"):
        mine = read_record(tiny_prepared.root / stage)["files"]
        theirs = read_record(other.root / stage)["files"]
        assert mine == theirs, stage


def test_corrupt_weights_are_refused_then_rebuilt(tmp_path: Path, tiny_prepared: Prepared) -> None:
    home = tmp_path / "home"
    shutil.copytree(tiny_prepared.root, home / "tasks/imdb-sentiment/tiny-seed0")
    weights = next((home / "tasks/imdb-sentiment/tiny-seed0/reward_model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(TaskError, match=r"reward_model.*corrupt.*shapetune prepare"):
        make_task("imdb-sentiment", home, size="tiny")
    rebuilt = prepare(home, PrepareConfig(size="tiny"))
    assert {n for n, r in rebuilt.stages.items() if r.built} == {"reward_model"}
    # The rebuild is deterministic, so it restores exactly the weights that were damaged.
    assert (
        read_record(rebuilt.root / "reward_model")["files"]
        == read_record(tiny_prepared.root / "reward_model")["files"]
    )
    make_task("imdb-sentiment", home, size="tiny")  # loads again


def test_unprepared_task_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"not prepared.*shapetune prepare --size tiny"):
        make_task("imdb-sentiment", tmp_path, size="tiny")
    assert not (tmp_path / "tasks" / "imdb-sentiment" / "tiny-seed0" / "policy" / RECORD).exists()


def test_prompts_and_gold(tiny_home: Path, tiny_prepared: Prepared) -> None:
    task = make_task("imdb-sentiment", tiny_home, size="tiny", prompt_tokens=8, eval_prompts=16)
    train, evals = task.prompts("train"), task.prompts("eval")
    assert len(evals) == 16 and len(train) > 0
    assert all(p[0] == task.tokenizer.bos_token_id and len(p) == 9 for p in train + evals)
    gold = task.gold(["A wonderful, moving film.", "Dull and awful."])
    assert gold[0] > 0 > gold[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": "huge"}, "unknown size 'huge'"),
        ({"prompt_tokens": 0}, "prompt_tokens=0"),
        ({"response_length": 129}, "response_length=129"),
        ({"colour": "red"}, "no option.*colour"),
    ],
)
def test_bad_options(tiny_home: Path, tiny_prepared: Prepared, options: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        make_task("imdb-sentiment", tiny_home, **{"size": "tiny", **options})
