"""The headline table: what dense shaping buys on the built-in task against the fair sparse
baseline, with 95 % confidence intervals, and the mix a tuning study finds.

    .venv/bin/python bench/headline.py --steps 60 --batch 32 --seeds 5   # the full size
    .venv/bin/python bench/headline.py --steps 30 --batch 16 --seeds 3   # what fits 2 cores

Needs the built-in task prepared (`shapetune prepare`). Every arm is `trainers.ppo.train` on
imdb-sentiment at equal PPO steps and the same seeds (--first-seed and up), two runs at a
time with one torch thread each; every arm's critic starts from the reward model, as the
strong sparse baseline's does, except the first row (sparse with the critic from the policy,
the classic set-up). The last row is the mix a tuning study finds: by default a study this
script runs first (`shapetune run`, the demo's spec with the table's inner settings, 2 seeds
a trial from seed 1000), or with `--study demo` the one `make demo` ran; its incumbent is
trained on the table's seeds, which the study never used.

Writes docs/results.md (the table, the machine, the versions, the time), docs/results.png
(held-out RM curves against steps and seconds) and the raw runs as JSON beside `--json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from common import machine, series
from methods_bench import one_run, plot, summarize

from service.tuning.study.verdict import OBJECTIVE_WORDS, decide, equivalence_margin, estimate
from trainers.signals import area_under_curve

RM = {"critic_init": "reward_model"}
ARMS: dict[str, dict[str, Any]] = {
    "sparse (critic: policy)": {"weights": {"sparse": 1.0}},
    "sparse (critic: RM)": {"weights": {"sparse": 1.0}, "ppo": RM},
    "uniform": {"weights": {"uniform": 1.0}, "ppo": RM},
    "red": {"weights": {"red": 1.0}, "ppo": RM},
    "attention": {"weights": {"attention": 1.0}, "ppo": RM},
    "shapley (tokens)": {"weights": {"shapley": 1.0}, "ppo": RM},
    "shapley (spans)": {
        "weights": {"shapley": 1.0},
        "options": {"shapley": {"unit": "span"}},
        "ppo": RM,
    },
    # The explainers at 100 rows a response, not their library's 500: at 500, one step of
    # 32 responses is 16,000 RM rows, beyond a 2-core budget.
    "shap": {"weights": {"shap": 1.0}, "options": {"shap": {"max_evals": 100}}, "ppo": RM},
    "lime": {"weights": {"lime": 1.0}, "options": {"lime": {"num_samples": 100}}, "ppo": RM},
    # At its defaults: the RM's explainer (built once, cached), a pair of coalitions a
    # response, audits against token Shapley every 4 steps.
    "amortized (explainer)": {"weights": {"amortized": 1.0}, "ppo": RM},
}
FAIR = "sparse (critic: RM)"
TUNED = "BO-tuned mix"
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def study_incumbent(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """The incumbent of study `--study` in `--home` (one `make demo` ran, say), or of a
    study this script runs first: the demo's spec (methods, their options, sampler,
    pruner) with the table's inner settings, 2 seeds a trial from seed 1000. Returned with
    what the table needs to train it: weights and the methods' options."""
    shapetune = Path(sys.executable).parent / "shapetune"
    if args.study:
        status = subprocess.run(
            [str(shapetune), "status", args.study, "--json", "--home", args.home],
            check=True,
            capture_output=True,
            text=True,
        )
        return _incumbent(json.loads(status.stdout), args.study)
    spec = {
        **yaml.safe_load(DEMO.read_text()),
        "name": "headline",
        "seed": 1000,  # the table's seeds are --first-seed and up: fresh to the study
        "budget": args.study_trials,
    }
    spec["inner"] = {
        **spec["inner"],
        "steps": settings["steps"],
        "eval_interval": settings["eval_interval"],
        "eval_prompts": settings["eval_prompts"],
        "ppo": {**settings["ppo"], **RM},
        "shaping": {**spec["inner"]["shaping"], **settings["shaping"]},
    }
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "headline.json"
        path.write_text(json.dumps(spec))
        env = {**os.environ, "SHAPETUNE_HOME": home}
        # The prepared task is read where `prepare` left it, not from the study's home.
        tasks = Path(args.home).expanduser() / "tasks"
        (Path(home) / "tasks").symlink_to(tasks)
        subprocess.run([str(shapetune), "run", str(path)], check=True, env=env)
        status = subprocess.run(
            [str(shapetune), "status", "headline", "--json"],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
    return _incumbent(json.loads(status.stdout), "headline")


def _incumbent(study: dict[str, Any], name: str) -> dict[str, Any]:
    best, spec = study["best"], study["spec"]
    return {
        "study": name,
        "trials": study["done"],
        "methods": spec["methods"],
        "inner": {k: v for k, v in spec["inner"].items() if k != "shaping"},
        "weights": best["weights"],
        "options": spec["inner"].get("shaping", {}).get("options", {}),
        "trial": best["trial"],
        "value": best["value"],
    }


def confidence(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (nan for one value), as the service
    computes it for the re-evaluation (`service.tuning.study.verdict.estimate`)."""
    found = estimate(values)
    half = float("nan") if found.high is None or found.mean is None else found.high - found.mean
    return statistics.fmean(values), half


def table_rows(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table = summarize(runs, FAIR)
    for arm, row in table.items():
        mine = [r for r in runs if r["arm"] == arm]
        finals = [series(r, "eval/rm_mean")[1][-1] for r in mine]
        row["final_rm"], row["final_rm_ci"] = confidence(finals)
        row["final_gold"], row["final_gold_ci"] = confidence(
            [series(r, "eval/gold_mean")[1][-1] for r in mine]
        )
        row["distinct_2"] = statistics.fmean(series(r, "eval/distinct_2")[1][-1] for r in mine)
        row["seeds"] = len(mine)
    return table


MARGIN_FRACTION = 0.2
"""As a study's default `margin`: within a fifth of fair sparse's own gain over the initial
policy, an arm is equivalent to it."""


def auc(run: dict[str, Any]) -> float:
    return area_under_curve(run["curves"], "eval/rm_mean")  # the studies' own objective


def paired_rows(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each arm minus fair sparse, paired by seed (every arm trains the same seeds), on the
    AUC and the final held-out reward: mean, 95 % t interval, and the verdict with the
    margin; for an undecided one, about how many more seeds would decide it."""
    fair = {r["seed"]: r for r in runs if r["arm"] == FAIR}
    out: dict[str, dict[str, Any]] = {}
    for name, measure in (("auc", auc), ("final", lambda r: series(r, "eval/rm_mean")[1][-1])):
        start = [series(r, "eval/rm_mean")[1][0] for r in fair.values()]
        gains = [measure(r) - s for r, s in zip(fair.values(), start, strict=True)]
        margin = equivalence_margin(MARGIN_FRACTION, gains)
        for arm in dict.fromkeys(r["arm"] for r in runs):
            if arm == FAIR:
                continue
            mine = [r for r in runs if r["arm"] == arm and r["seed"] in fair]
            d = estimate([measure(r) - measure(fair[r["seed"]]) for r in mine])
            decision = decide(d, margin, "maximize")
            out.setdefault(arm, {})[name] = {
                "mean": d.mean,
                "low": d.low,
                "high": d.high,
                "seeds": len(mine),
                "margin": margin,
                "verdict": decision.outcome,
                "more_seeds": decision.more_seeds,
            }
    return out


def paired_table(paired: dict[str, dict[str, Any]]) -> str:
    head = (
        f"| arm | AUC minus {FAIR} (95 % CI) | verdict (margin) | final minus {FAIR} "
        "(95 % CI) | verdict (margin) |\n|---|---|---|---|---|\n"
    )
    rows = []
    for arm, by in paired.items():
        cells = []
        for name in ("auc", "final"):
            m = by[name]
            said = m["verdict"]
            if said == "undecided":
                said += f", ~{m['more_seeds']} more seeds" if m["more_seeds"] else ", >1000 seeds"
            cells.append(
                f"{m['mean']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}] | {said} (±{m['margin']:.3f})"
            )
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    head = (
        "| arm | held-out RM final (95 % CI) | AUC | steps to fair sparse final "
        "| s to fair sparse final | gold final (95 % CI) | KL | RM at fair sparse KL "
        "| repetition | distinct-2 | attribution | RM rows/resp |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for arm, m in table.items():
        reached = f"{m['steps_to_sparse_final']:.1f} ({m['reached_in_runs']}/{m['seeds']})"
        rows.append(
            f"| {arm} | {m['final_rm']:.3f} ± {m['final_rm_ci']:.3f} | {m['auc_rm']:.3f} "
            f"| {reached} | {m['seconds_to_sparse_final']:.0f} "
            f"| {m['final_gold']:.3f} ± {m['final_gold_ci']:.3f} | {m['final_kl']:.2f} "
            f"| {m['rm_at_sparse_kl']:.3f} | {m['final_repetition']:.3f} | {m['distinct_2']:.3f} "
            f"| {100 * m['attribution_share']:.0f} % | {m['rm_rows_per_response']:.1f} |"
        )
    return head + "\n".join(rows) + "\n"


def versions() -> str:
    import optuna
    import torch
    import transformers

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, optuna {optuna.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-interval", type=int, default=5)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--study-trials", type=int, default=8)
    parser.add_argument("--arms", default=",".join(ARMS), help="Comma-separated; all by default.")
    parser.add_argument("--no-study", action="store_true", help="Leave out the BO-tuned row.")
    parser.add_argument(
        "--study", help="Take the BO-tuned row from this finished study in --home (e.g. demo)."
    )
    parser.add_argument(
        "--coalition-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="The RM copy that scores masked variants: bfloat16 pays only on a CPU with "
        "native bf16 (trainers/config.py, ShapingConfig.coalition_dtype).",
    )
    parser.add_argument(
        "--first-seed", type=int, default=100, help="Seeds of the table: fresh to the studies."
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--home", default=os.environ.get("SHAPETUNE_HOME", "~/.shapetune"))
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/headline.json"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("SHAPETUNE_HOME", "~/.shapetune")) / "bench" / "headline",
        help="Finished runs, kept so that a stopped sitting resumes.",
    )
    parser.add_argument(
        "--page-only",
        action="store_true",
        help="Write the page again from --json (its runs), without training.",
    )
    a = parser.parse_args()
    if a.page_only:
        result = json.loads(a.json.read_text())
        for run in result["runs"]:
            run["curves"] = {int(s): m for s, m in run["curves"].items()}
        result["paired"] = paired_rows(result["runs"])
        a.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
        a.out.write_text(page(result, _sizes(a, result)))
        print(paired_table(result["paired"]))
        return
    started = time.perf_counter()
    settings: dict[str, Any] = {
        "steps": a.steps,
        "eval_interval": a.eval_interval,
        "eval_prompts": a.eval_prompts,
        "home": str(Path(a.home).expanduser()),
        "ppo": {"rollout_batch": a.batch, "minibatch": a.batch // 2, "epochs": 2},
        "shaping": {"coalition_dtype": a.coalition_dtype},
    }
    arms = {name: ARMS[name] for name in a.arms.split(",")}
    study = None
    if not a.no_study:
        study = study_incumbent(a, settings)
        arms[TUNED] = {"weights": study["weights"], "options": study["options"], "ppo": RM}
    settings["arms"] = arms
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    runs = run_or_resume(arms, seeds, settings, a)
    table = table_rows(runs)
    seconds = time.perf_counter() - started
    result = {
        "machine": machine(),
        "versions": versions(),
        "command": " ".join(["bench/headline.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in settings.items() if k not in ("arms", "home")},
        "arms": arms,
        "study": study,
        "wall_seconds": round(seconds, 1),
        "table": table,
        "paired": paired_rows(runs),
        "runs": runs,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot(runs, a.out.with_suffix(".png"), log_seconds=True)
    a.out.write_text(page(result, a))
    print(markdown_table(table))


def _sizes(a: argparse.Namespace, result: dict[str, Any]) -> argparse.Namespace:
    """The arguments a page describes, as the runs in `result` were made."""
    settings, seeds = result["settings"], sorted({r["seed"] for r in result["runs"]})
    return argparse.Namespace(
        **{
            **vars(a),
            "steps": settings["steps"],
            "eval_interval": settings["eval_interval"],
            "eval_prompts": settings["eval_prompts"],
            "batch": settings["ppo"]["rollout_batch"],
            "coalition_dtype": settings.get("shaping", {}).get("coalition_dtype", "float32"),
            "first_seed": seeds[0],
            "seeds": len(seeds),
        }
    )


def run_or_resume(
    arms: dict[str, Any], seeds: range, settings: dict[str, Any], a: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every (arm, seed) run, each kept as JSON under --cache as it finishes, in a folder
    named by the settings: a sitting that stopped is resumed by running the same command
    again, and nothing finished is redone."""
    key = json.dumps({k: v for k, v in settings.items() if k != "home"}, sort_keys=True)
    folder = a.cache.expanduser() / hashlib.sha256(key.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)

    def path(arm: str, seed: int) -> Path:
        return folder / f"{hashlib.sha256(arm.encode()).hexdigest()[:8]}-{seed}.json"

    todo = [(arm, seed) for arm in arms for seed in seeds if not path(arm, seed).is_file()]
    print(f"{len(todo)} of {len(arms) * len(seeds)} runs to do; kept in {folder}")
    with ProcessPoolExecutor(a.processes) as pool:
        pending = [(arm, seed, pool.submit(one_run, arm, seed, settings)) for arm, seed in todo]
        for arm, seed, future in pending:
            done = path(arm, seed)
            done.with_suffix(".tmp").write_text(json.dumps(future.result(), default=float))
            done.with_suffix(".tmp").replace(done)  # whole or not at all
    runs = []
    for arm in arms:
        for seed in seeds:
            run = json.loads(path(arm, seed).read_text())
            run["curves"] = {int(s): m for s, m in run["curves"].items()}
            runs.append(run)
    return runs


def page(result: dict[str, Any], a: argparse.Namespace) -> str:
    """docs/results.md: the generated part; the reading of it is written by hand below the
    marker and kept when the page is made again."""
    marker = "<!-- written by hand below: kept by bench/headline.py -->"
    kept = ""
    if a.out.is_file() and marker in (old := a.out.read_text()):
        kept = old.split(marker, 1)[1]
    study = result["study"]
    tuned = (
        f"The BO-tuned mix: weights {study['weights']}, the incumbent (trial {study['trial']}) "
        f"of study `{study['study']}` ({study['trials']} completed trials over "
        f"{', '.join(study['methods'])}, inner runs {json.dumps(study['inner'])}), "
        "trained on the table's seeds, which that study never used."
        if study
        else "No BO-tuned row in this run (--no-study)."
    )
    return (
        "# Results on the built-in task\n\n"
        f"Made by `.venv/bin/python {result['command']}` in {result['wall_seconds'] / 60:.0f} "
        f"minutes on {result['machine']} ({result['versions']}).\n\n"
        f"Settings: {a.steps} PPO steps of {a.batch} prompts, {a.seeds} seeds per arm "
        f"({a.first_seed}..{a.first_seed + a.seeds - 1}), masked variants scored by a "
        f"{a.coalition_dtype} copy of the RM, "
        f"held-out evaluation every {a.eval_interval} steps on {a.eval_prompts} prompts. "
        "Every arm's critic starts from the reward model except the first row. "
        f'The fair baseline is `{FAIR}`: "steps / s to fair sparse final" is when an arm\'s '
        "held-out reward first reaches that run's final mean (in how many of its runs), "
        '"RM at fair sparse KL" its reward interpolated at that run\'s final KL. '
        f"{tuned}\n\n"
        + markdown_table(result["table"])
        + "\nEach arm against the fair baseline, paired by seed (every arm trains the same "
        "seeds, so what a seed does to every arm alike cancels), with the verdict at 95 %: "
        "beats, loses, equivalent within the margin (a fifth of fair sparse's own gain over "
        f"the initial policy on {OBJECTIVE_WORDS['auc']} or the final reward), or "
        "undecided, with about how many more seeds would decide it at the observed spread.\n\n"
        + paired_table(result["paired"])
        + "\n![held-out reward curves](results.png)\n\n"
        f"{marker}{kept}"
    )


if __name__ == "__main__":
    main()
