"""``summary.json``: a campaign's results per iteration, from its steps' manifests (no MLflow needed).

Schema (docs/design.md#the-campaign; more fields are welcome)::

    {"campaign", "experiment", "code_version", "machine": {"cpu", "cores", "fast_bf16", "torch", "precision", ...},
     "config": {...resolved...}, "sft": {...},
     "iterations": [{"iteration", "policy_path", "mlflow_run_id", "wall_seconds": {step: s},
                     "peak_rss_mb": {step: MB},
                     "reward": {rm: {"accuracy", "ci95", "accuracy_by_level": {level: acc}, "ci95_by_level",
                                     "n_test", "n_by_level", "label_ceiling", "gold_agreement",
                                     "n_gold_ordered", "axis", "synthetic"?: {the same keys}}},
                     "temperature": {"chosen", "curve": {str(T): mean max-of-K reward}},
                     "rejection": {"k", "pool_size", "pool_mean_score", "pool_by_iteration", ...},
                     "ppo": {"steps", "reward_start", "reward_end", "kl_end", "early_stopped", ...} or null,
                     "gatt": {"adherence_by_turn": {"before": {turn: share}, "after": {...}},
                              "zero_shot": {"before": share, "after": share}, "n_dialogues", ...} or null,
                     "win_rate": {"<baseline>/<judge>": {"judge", "win", "tie", "loss", "win_rate", "ci95", "n",
                                                         "win_rate_when_first", "win_rate_when_second"}},
                     "win_rate_with_system": {the same, with eval.system_prompt} or null}]}

Accuracies are shares in [0, 1]; ``label_ceiling`` and ``gold_agreement`` (null unless the simulated rater
labelled the pairs) say what accuracy the labels allow and how often the RM orders a pair as the gold judge does;
levels are named as in ``rlhf.core.preferences.LEVELS`` (``significantly_better`` ...).
"""

from __future__ import annotations

import math

from rlhf.core.preferences import LEVELS


def _number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _interval(metrics: dict, prefix: str, suffix: str = "") -> list | None:
    lo, hi = (_number(metrics.get(f"{prefix}/ci95_{end}{suffix}")) for end in ("lo", "hi"))
    return None if lo is None or hi is None else [lo, hi]


def accuracy_entry(metrics: dict, prefix: str = "test") -> dict:
    """An RM's accuracy on one held-out set from a step's ``<prefix>/...`` metrics (``rlhf.core.reward.metrics``):
    overall and by level, with 95 % Wilson intervals and pair counts."""
    return {"accuracy": _number(metrics.get(f"{prefix}/accuracy")), "ci95": _interval(metrics, prefix),
            "accuracy_by_level": {level: _number(metrics.get(f"{prefix}/accuracy/{level}")) for level in LEVELS},
            "ci95_by_level": {level: _interval(metrics, prefix, f"/{level}") for level in LEVELS},
            "n_test": int(metrics.get(f"{prefix}/n_test", 0)),
            "n_by_level": {level: int(metrics.get(f"{prefix}/n/{level}", 0)) for level in LEVELS},
            # pairs the simulated rater labelled (rlhf.core.reward.metrics.gold_metrics), else null
            "label_ceiling": _number(metrics.get(f"{prefix}/label_ceiling")),
            "gold_agreement": _number(metrics.get(f"{prefix}/gold_agreement")),
            "n_gold_ordered": _number(metrics.get(f"{prefix}/n_gold_ordered"))}


def reward_entry(trained: dict, evaluated: dict | None = None) -> dict:
    """An RM's Table 8: accuracy on the held-out pairs of its axis that were labelled in this campaign's
    iterations so far (``rm_train``'s ``test/`` metrics); beside it, under ``synthetic``, the accuracy on
    simulated-rater pairs where there are some (the seed pairs' held-out share, and ``eval_reward_models``
    when it runs: ``reward.n_eval_synthetic`` or ``reward.eval_data``)."""
    entry = accuracy_entry(trained) | {"axis": trained.get("axis")}
    if "test_synthetic/accuracy" in trained:
        entry["synthetic_seed"] = accuracy_entry(trained, "test_synthetic")
    if evaluated:
        prefix = "test" if "test/accuracy" in evaluated else "test_synthetic"
        entry["eval_data" if prefix == "test" else "synthetic"] = accuracy_entry(evaluated, prefix)
    return entry


def ablation_entry(metrics: dict) -> dict:
    """Table 28 from ``rm_ablate``'s metrics: each margin variant's accuracy (as :func:`accuracy_entry`) on the
    same held-out pairs (``test_set`` says which)."""
    variants = sorted({key.split("/")[0] for key in metrics if key.endswith("/accuracy")})
    return {"test_set": metrics.get("test_set"), "n_train": metrics.get("n_train"),
            "variants": {variant: accuracy_entry(metrics, variant) for variant in variants}}


def iteration_entry(iteration: int, refs: dict, run_id: str) -> dict:
    """One iteration's summary from its step references (``rlhf.tasks.steps`` return values)."""
    rms, rm_evals = refs["train_reward_models"], refs.get("eval_reward_models", {})
    search, rejection, evaluation = refs["search_temperature"], refs["rejection_sample"], refs["evaluate"]
    wall, memory = {}, {}
    for step, ref in refs.items():
        parts = ref.values() if step in ("train_reward_models", "eval_reward_models") else [ref]
        wall[step] = sum(p["metrics"].get("wall_seconds", 0.0) for p in parts)
        peaks = [p["metrics"]["peak_rss_mb"] for p in parts if p["metrics"].get("peak_rss_mb") is not None]
        if peaks:
            memory[step] = max(peaks)
    pool = rejection["metrics"]
    return {
        "iteration": iteration,
        "policy_path": (refs.get("gatt") or refs.get("ppo") or refs["train_policy"])["path"],  # the last to run
        "reward_model_paths": {name: ref["path"] for name, ref in rms.items()},
        "mlflow_run_id": run_id,
        "wall_seconds": wall,
        "peak_rss_mb": memory,  # per step: the peak resident memory of the process that ran it
        "reward": {name: reward_entry(ref["metrics"], rm_evals[name]["metrics"] if name in rm_evals else None)
                   for name, ref in rms.items()},
        "reward_train": {name: {"steps": ref["metrics"]["steps"], "n_train": ref["metrics"]["n_train"],
                                "n_train_other_axis": ref["metrics"].get("n_train_other_axis", 0),
                                "n_dropped_contradicting": ref["metrics"].get("n_dropped_contradicting", 0),
                                "train_loss_last": ref["metrics"]["train_loss_last"]} for name, ref in rms.items()},
        "reward_ablation": ablation_entry(refs["ablate_reward_models"]["metrics"])
        if "ablate_reward_models" in refs else None,
        "pairs": {"collected": refs["collect_pairs"]["metrics"]["n_pairs"],
                  "levels": refs["annotate"]["metrics"]["levels"],
                  "variants": refs["collect_pairs"]["metrics"].get("variants"),
                  "by_variant": refs["annotate"]["metrics"].get("by_variant") or {}},
        "temperature": {"chosen": search["metrics"]["chosen"], "curve": search["metrics"]["curve"]},
        "rejection": {"k": pool["k"], "temperature": pool["temperature"], "pool_size": pool["pool_size"],
                      "pool_mean_score": pool["pool_mean_score"], "pool_by_iteration": pool["pool_by_iteration"],
                      "max_of_k_mean": pool.get("sample_mean_max"), "gain": pool["gain"]},
        "policy_train": {"steps": refs["train_policy"]["metrics"]["steps"],
                         "train_loss_first": refs["train_policy"]["metrics"]["train_loss_first"],
                         "train_loss_last": refs["train_policy"]["metrics"]["train_loss_last"]},
        "ppo": refs["ppo"]["metrics"] if "ppo" in refs else None,
        "gatt": (refs.get("gatt") or refs.get("gatt_adherence") or {}).get("metrics"),  # its own step, or in the pool
        "win_rate": evaluation["metrics"]["win_rate"],
        "win_rate_by_set": evaluation["metrics"].get("win_rate_by_set") or {},
        "violation_rate": evaluation["metrics"].get("violation_rate") or {},
        # eval.system_prompt: the same comparisons with every model told the system prompt (else absent)
        "win_rate_with_system": evaluation["metrics"].get("win_rate_with_system"),
        "violation_rate_with_system": evaluation["metrics"].get("violation_rate_with_system"),
        "student": student_entry(refs["distill"], refs["evaluate_student"]) if "distill" in refs else None,
    }


def student_entry(distill: dict, evaluated: dict) -> dict:
    """The distilled student of an iteration (``rejection.student``): where it is, its fine-tune on the pool, and
    its win rates against the SFT model and the teacher (``sft/<judge>``, ``teacher/<judge>``)."""
    return {"path": distill["path"], "steps": distill["metrics"]["steps"],
            "train_loss_last": distill["metrics"]["train_loss_last"],
            "win_rate": evaluated["metrics"]["win_rate"],
            "violation_rate": (evaluated["metrics"].get("violation_rate") or {}).get("model")}


# Metric sections in reading order, numbered so MLflow (which sorts names alphabetically) lists the
# headline first and the rest in the DAG's order: win rates, RMs, temperature, pool, PPO, GAtt, the student.
SECTION_ORDER = ("win_rate", "rm", "temperature", "rejection", "ppo", "gatt", "student")


def _win_metrics(prefix: str, win_rate: dict) -> dict[str, float]:
    """``<prefix>/<opponent>/<judge>`` and its 95 % CI bounds beside it (``.../ci_lo``, ``.../ci_hi``)."""
    out = {}
    for key, result in win_rate.items():
        out[f"{prefix}/{key}"] = result["win_rate"]
        out[f"{prefix}/{key}/ci_lo"], out[f"{prefix}/{key}/ci_hi"] = result["ci95"]
    return out


def progression_metrics(entry: dict) -> dict[str, float]:
    """The numbers plotted across iterations in MLflow (logged with ``step=iteration``), named
    ``<n>_<section>/...`` (``1_win_rate/sft/gold``, ``2_rm/helpful/accuracy``, ...); a win rate's 95 % CI
    bounds sit beside it (``.../ci_lo``, ``.../ci_hi``)."""
    out = {}
    out |= _win_metrics("win_rate", entry["win_rate"])
    for key, sets in (entry.get("win_rate_by_set") or {}).items():
        out |= {f"win_rate/{key}/{prompt_set}": result["win_rate"] for prompt_set, result in sets.items()}
    for model, violations in (entry.get("violation_rate") or {}).items():
        if violations:
            out[f"win_rate/violation_rate/{model}"] = violations["rate"]
    out |= _win_metrics("win_rate/with_system", entry.get("win_rate_with_system") or {})
    for key, result in entry["win_rate"].items():  # a pairwise judge's position bias
        if result.get("win_rate_when_first") is not None and key.endswith("/pairwise"):
            out[f"win_rate/{key}/when_first"] = result["win_rate_when_first"]
            out[f"win_rate/{key}/when_second"] = result["win_rate_when_second"]
    for name, rm in entry["reward"].items():
        out[f"rm/{name}/accuracy"] = rm["accuracy"]
        out |= {f"rm/{name}/accuracy/{level}": acc for level, acc in rm["accuracy_by_level"].items()}
        out |= {f"rm/{name}/{key}": rm[key] for key in ("label_ceiling", "gold_agreement")
                if rm.get(key) is not None}
    out["temperature/chosen"] = entry["temperature"]["chosen"]
    for t, value in entry["temperature"]["curve"].items():
        out[f"temperature/curve/T{t}"] = value
    out["rejection/pool_mean_score"] = entry["rejection"]["pool_mean_score"]
    out["rejection/pool_size"] = entry["rejection"]["pool_size"]
    if entry["rejection"].get("max_of_k_mean") is not None:
        out["rejection/max_of_k_mean"] = entry["rejection"]["max_of_k_mean"]
    if entry.get("ppo"):
        out |= {f"ppo/{k}": entry["ppo"][k] for k in ("reward_start", "reward_end", "kl_end", "steps")}
    if entry.get("gatt"):
        g = entry["gatt"]
        out |= {f"gatt/adherence_mean/{k}": v for k, v in g["adherence_mean"].items()}
        out |= {f"gatt/zero_shot/{k}": v for k, v in g["zero_shot"].items()}
    if entry.get("student"):
        out |= _win_metrics("student/win_rate", entry["student"]["win_rate"])
    return {f"{SECTION_ORDER.index(k.split('/')[0]) + 1}_{k}": float(v) for k, v in out.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))}


def table(summary: dict) -> str:
    """The per-iteration table printed at the end of a run."""
    rows = [("iter", "RM acc (helpful / safety)", "T", "pool score", "win rate vs SFT (gold)", "vs SFT (RM)")]
    for it in summary["iterations"]:
        acc = " / ".join(_accuracy(r) for r in it["reward"].values())
        rows.append((f"V{it['iteration']}", acc, f"{it['temperature']['chosen']:g}",
                     f"{it['rejection']['pool_mean_score']:.3f}", _win(it, "sft/gold"), _win(it, "sft/rm")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _accuracy(rm: dict) -> str:
    """``48%``, or ``48% (ceil. 64%)`` where the simulated rater's labels have a known ceiling."""
    if rm["accuracy"] is None:
        return "-"
    ceiling = rm.get("label_ceiling")
    return f"{100 * rm['accuracy']:.0f}%" + ("" if ceiling is None else f" (ceil. {100 * ceiling:.0f}%)")


def _win(entry: dict, key: str) -> str:
    result = entry["win_rate"].get(key)
    if result is None:
        return "-"
    lo, hi = result["ci95"]
    return f"{100 * result['win_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] n={result['n']}"


def iteration_markdown(entry: dict) -> str:
    """One iteration's results as a Markdown table (the Prefect artifact of its flow run)."""
    rows = [("win rate vs " + key.replace("/", ", judge "), _win(entry, key)) for key in entry["win_rate"]]
    for name, rm in entry["reward"].items():
        acc = "-" if rm["accuracy"] is None else f"{100 * rm['accuracy']:.0f}%"
        rows.append((f"{name} RM accuracy (held out)", f"{acc} n={rm['n_test']}"))
        if rm.get("label_ceiling") is not None:
            rows.append((f"{name} RM: labels' ceiling, gold agreement",
                         f"{100 * rm['label_ceiling']:.0f}%, {100 * rm['gold_agreement']:.0f}%"))
    pool = entry["rejection"]
    rows += [("temperature chosen", f"{entry['temperature']['chosen']:g}"),
             ("pool mean score", f"{pool['pool_mean_score']:.3f} ({pool['pool_size']} prompts)")]
    if entry.get("ppo"):
        ppo = entry["ppo"]
        rows.append(("PPO reward (start -> end)", f"{ppo['reward_start']:.3f} -> {ppo['reward_end']:.3f}"))
    if entry.get("gatt"):
        rows.append(("GAtt zero-shot adherence (before -> after)",
                     " -> ".join(f"{100 * entry['gatt']['zero_shot'][k]:.0f}%" for k in ("before", "after"))))
    return "\n".join(["| RLHF-V{} | |".format(entry["iteration"]), "|---|---|",
                      *(f"| {name} | {value} |" for name, value in rows)])


def end_of_run_report(summary: dict) -> str:
    """The per-iteration table and where to look next."""
    home = summary["campaign_dir"]
    return (f"\n{table(summary)}\n\ncampaign directory: {home}\nsummary: {home}/summary.json\n"
            f"report: {summary.get('report', '-')} (and report.html beside it)\n"
            f"MLflow: `rlhf ui campaign.root={str(home).rsplit('/', 1)[0]}` (experiment {summary['experiment']!r})")
