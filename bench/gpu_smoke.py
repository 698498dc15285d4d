"""The CUDA path, end to end, beside the same on the CPU.

    .venv/bin/python bench/gpu_smoke.py --out bench/results/gpu.json     # where CUDA is
    .venv/bin/python bench/gpu_smoke.py --size tiny --steps 2            # the CPU path (CI)

On every device it finds (the CPU, and CUDA when torch sees one):

1. an inner PPO run on the built-in task with Shapley-family credit (token Shapley and
   SHAP, half the weight, beside sparse): seconds per PPO step and the share of it spent
   attributing;
2. a two-trial study on local Ray with `resources.gpus: 1` on CUDA (0 on the CPU), each
   trial's runs placed by Ray: the study's wall time and where its runs ran;
3. the shape exported for verl, shaping one batch of the policy's responses on that device
   (`trainers.portable_shape.ShapedRewards`, what verl's reward manager calls, and the
   manager itself where verl is installed): seconds per response.

The built-in task must be prepared (`shapetune prepare --size SIZE`). Nothing is timed
against a goal here: the figures go to `--out` and bench/results/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine

from service.executor import make_executor
from service.export import export_verl, portable_shape
from service.settings import get_settings
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import run_study
from trainers.config import TrainConfig
from trainers.portable_shape import ShapedRewards
from trainers.ppo import train
from trainers.tasks import make_task

WEIGHTS = {"sparse": 0.5, "shapley": 0.3, "shap": 0.2}


def devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def inner_run(home: Path, size: str, steps: int, device: str) -> dict[str, Any]:
    config = TrainConfig.from_dict(
        {
            "task": {"name": "imdb-sentiment", "options": {"size": size}},
            "shaping": {"weights": WEIGHTS},
            "ppo": {"rollout_batch": 16, "minibatch": 8, "epochs": 2},
            "steps": steps,
            "eval_interval": steps,
            "eval_prompts": 16,
            "device": device,
            "seed": 0,
        }
    )
    task = make_task("imdb-sentiment", home, size=size)
    started = time.perf_counter()
    result = train(config, task)
    wall = time.perf_counter() - started
    attribution = result.costs.get("cost/attribution_seconds", 0.0)
    training = sum(
        result.phase_seconds.get(p, 0.0) for p in result.phase_seconds if p != "evaluate"
    )
    return {
        "wall_seconds": round(wall, 2),
        "seconds_per_step": round(training / steps, 3),
        "attribution_share": round(attribution / training, 3) if training else None,
        "final_reward": result.final.get("eval/rm_mean"),
    }


def study_on_ray(home: Path, size: str, steps: int, device: str) -> dict[str, Any]:
    gpus = 1 if device == "cuda" else 0
    spec = parse_spec(
        {
            "name": f"gpu-smoke-{device}-{int(time.time())}",
            "task": {"name": "imdb-sentiment", "options": {"size": size}},
            "methods": list(WEIGHTS),
            "inner": {
                "steps": steps,
                "eval_interval": steps,
                "eval_prompts": 16,
                "device": device,
                "ppo": {"rollout_batch": 16, "minibatch": 8, "epochs": 2},
            },
            "budget": 2,
            "seeds": 1,
            "sampler": "random",
            "executor": "ray",
            "resources": {"workers": 1, "cpus": 1, "gpus": gpus},
        }
    )
    executor = make_executor("ray", cpus=1, gpus=gpus, workers=1)
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        final = run_study(spec, f"sqlite:///{store}/studies.db", home, executor)
        wall = time.perf_counter() - started
    return {"trials": final.done, "gpus_per_run": gpus, "wall_seconds": round(wall, 1)}


def exported_shape(home: Path, size: str, device: str) -> dict[str, Any]:
    spec = parse_spec(
        {
            "name": "gpu-smoke-export",
            "task": {"name": "imdb-sentiment", "options": {"size": size}},
            "methods": list(WEIGHTS),
            "budget": 1,
        }
    )
    task = make_task("imdb-sentiment", home, size=size)
    prompts = task.prompts("eval")[:16]
    policy = task.load_policy()
    torch.manual_seed(0)
    rows = [
        policy.generate(torch.tensor([p]), do_sample=True, max_new_tokens=task.response_length)[
            0, len(p) :
        ].tolist()
        for p in prompts
    ]
    P, T = max(map(len, prompts)), max(map(len, rows))
    ids = torch.zeros(len(rows), P, dtype=torch.long), torch.zeros(len(rows), T, dtype=torch.long)
    masks = torch.zeros_like(ids[0]), torch.zeros_like(ids[1])
    for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        ids[0][i, P - len(p) :], masks[0][i, P - len(p) :] = torch.tensor(p), 1
        ids[1][i, : len(r)], masks[1][i, : len(r)] = torch.tensor(r), 1
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "export"
        export_verl(portable_shape(spec, 0, WEIGHTS, {}, home), out)
        started = time.perf_counter()
        ShapedRewards.load(out / "shape.json", task.tokenizer, device)(
            ids[0], masks[0], *ids[1:], masks[1]
        )
        seconds = time.perf_counter() - started
        through = "ShapedRewards"
        try:  # the verl manager itself, where verl is installed
            from verl import DataProto
            from verl.utils.import_utils import load_extern_object

            manager = load_extern_object(
                str(out / "shapetune_reward.py"), "ShapedLegacyRewardManager"
            )
            data = DataProto.from_dict(
                tensors={
                    "prompts": ids[0],
                    "responses": ids[1],
                    "attention_mask": torch.cat([masks[0], masks[1]], 1),
                }
            )
            started = time.perf_counter()
            manager(tokenizer=task.tokenizer)(data)
            seconds, through = time.perf_counter() - started, "verl legacy manager"
        except ImportError:
            pass
    return {
        "responses": len(rows),
        "through": through,
        "seconds_per_response": round(seconds / len(rows), 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", default="default", help="the built-in task's size")
    parser.add_argument("--steps", type=int, default=4, help="PPO steps per inner run")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--home", type=Path, default=None, help="default: SHAPETUNE_HOME")
    args = parser.parse_args(argv)
    home = args.home or get_settings().resolved_home()
    figures: dict[str, Any] = {
        "machine": machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "size": args.size,
        "steps": args.steps,
    }
    for device in devices():
        figures[device] = {
            "inner_run": inner_run(home, args.size, args.steps, device),
            "study_on_ray": study_on_ray(home, args.size, args.steps, device),
            "exported_shape": exported_shape(home, args.size, device),
        }
        print(device, json.dumps(figures[device]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
