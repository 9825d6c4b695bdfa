"""The campaign report (``rlhf report``; also written at the end of every campaign run)::

    <campaign>/report/report.md, report.html    the same content in two formats
    <campaign>/report/plots/*.png               the figures (linked from report.md, inlined in report.html)

Everything in it comes from ``summary.json`` (the numbers MLflow also holds) plus the steps' own tables
(the rejection-sampling gain for Fig. 7, the evaluation's answers for the examples, the table of a margin
ablation if one was run), found through the steps' output contracts. Each section is one function
(``SECTIONS``); the flows and the CLI attach the written report to MLflow. The verdict is computed,
never written by hand: the final iteration beats the SFT model only when the lower end of the 95 % CI
of its win rate is above 50 %.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf.core.artifacts import atomic_dir
from rlhf.core.errors import RLHFError
from rlhf.core.evaluation import PROMPT_SETS
from rlhf.core.preferences import LEVELS
from rlhf.core.steps.outputs import EVALUATE, REJECTION_SAMPLE, RM_ABLATION, Outputs

from .document import Doc
from .layout import ITERATION_PREFIX, read_summary

REPORT_DIR = "report"
JUDGE_NAMES = {"gold": "gold rater (the human-evaluation analog)", "rm": "reward models (combined)",
               "rm_helpful": "Helpfulness RM", "rm_safety": "Safety RM"}
N_EXAMPLES = 3


def pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def ci(result: dict) -> str:
    return f"[{pct(result['ci95'][0])}, {pct(result['ci95'][1])}]"


def verdict(result: dict | None, model: str, baseline: str) -> str:
    """One sentence from a win-rate result: better / worse / not distinguishable at this n."""
    if result is None:
        return f"{model} vs {baseline}: not measured."
    lo, hi = result["ci95"]
    numbers = f"win rate {pct(result['win_rate'])}, 95 % CI {ci(result)}, n={result['n']}"
    if lo > 0.5:
        return f"**{model} beats {baseline}** by the {result['judge']} judge ({numbers})."
    if hi < 0.5:
        return f"**{model} is worse than {baseline}** by the {result['judge']} judge ({numbers})."
    return (f"**{model} is not distinguishable from {baseline}** by the {result['judge']} judge ({numbers}): "
            "the CI includes 50 %.")


# --------------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_win_rates(iterations: list[dict], path: Path) -> None:
    """Win rate vs the SFT model and vs the previous iteration, per judge, with 95 % CIs."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = ((axes[0], "sft", "vs the SFT model"), (axes[1], "previous", "vs the previous iteration"))
    for ax, baseline, title in panels:
        judges = sorted({k.split("/")[1] for it in iterations for k in it["win_rate"] if k.startswith(baseline + "/")})
        for j, judge in enumerate(judges):
            xs, ys, err = [], [], [[], []]
            for it in iterations:
                r = it["win_rate"].get(f"{baseline}/{judge}")
                if r:
                    xs.append(it["iteration"] + 0.06 * (j - (len(judges) - 1) / 2))
                    ys.append(r["win_rate"])
                    err[0].append(r["win_rate"] - r["ci95"][0])
                    err[1].append(r["ci95"][1] - r["win_rate"])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=JUDGE_NAMES.get(judge, judge))
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="parity (50 %)")
        ax.set_xticks([it["iteration"] for it in iterations], [f"RLHF-V{it['iteration']}" for it in iterations])
        ax.set_ylim(0, 1)
        ax.set_title(f"Win rate {title}")
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("win rate (ties count half), 95 % CI")
    _save(fig, path)


def plot_helpful_vs_safety(iterations: list[dict], path: Path) -> bool:
    """Fig. 11 analog: win rate vs SFT on the Safety RM's axis against the Helpfulness RM's."""
    points = [(it["iteration"], it["win_rate"]["sft/rm_helpful"], it["win_rate"]["sft/rm_safety"])
              for it in iterations if "sft/rm_helpful" in it["win_rate"] and "sft/rm_safety" in it["win_rate"]]
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for n, h, s in points:
        ax.errorbar(h["win_rate"], s["win_rate"], xerr=[[h["win_rate"] - h["ci95"][0]], [h["ci95"][1] - h["win_rate"]]],
                    yerr=[[s["win_rate"] - s["ci95"][0]], [s["ci95"][1] - s["win_rate"]]], marker="o", capsize=3)
        ax.annotate(f"RLHF-V{n}", (h["win_rate"], s["win_rate"]), textcoords="offset points", xytext=(6, 6))
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("helpfulness: win rate vs SFT (Helpfulness RM)")
    ax.set_ylabel("harmlessness: win rate vs SFT (Safety RM)")
    ax.set_title("Progression on the two RM axes (Fig. 11 analog)")
    _save(fig, path)
    return True


def plot_rm_accuracy(iterations: list[dict], path: Path) -> None:
    """Held-out accuracy per preference level, one line per iteration, one panel per RM (Table 8)."""
    plt = _plt()
    names = sorted({name for it in iterations for name in it["reward"]})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), sharey=True, squeeze=False)
    labels = [level.replace("_", " ") for level in LEVELS] + ["overall"]
    for ax, name in zip(axes[0], names):
        for it in iterations:
            rm = it["reward"].get(name)
            if rm:
                ys = [rm["accuracy_by_level"].get(level) for level in LEVELS] + [rm["accuracy"]]
                ax.plot(range(len(labels)), [np.nan if y is None else y for y in ys], marker="o",
                        label=f"RLHF-V{it['iteration']}")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name.capitalize()} RM: held-out accuracy by preference level")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("accuracy")
    _save(fig, path)


def plot_temperature(iterations: list[dict], path: Path) -> None:
    """Fig. 8: mean max-of-K reward against the sampling temperature, per iteration; chosen T starred."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for it in iterations:
        curve = {float(t): v for t, v in it["temperature"]["curve"].items()}
        ts = sorted(curve)
        line, = ax.plot(ts, [curve[t] for t in ts], marker="o", label=f"RLHF-V{it['iteration']}")
        chosen = it["temperature"]["chosen"]
        ax.plot([chosen], [curve[float(chosen)]], marker="*", markersize=16, color=line.get_color())
    ax.set_xlabel("temperature")
    ax.set_ylabel(f"mean max-of-{iterations[0]['rejection']['k']} reward")
    ax.set_title("Temperature search per iteration (Fig. 8; star = chosen)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_best_of_k(gains: dict[int, pd.DataFrame], path: Path) -> None:
    """Fig. 7: E[max of K] and the median reward against K, per iteration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for n, gain in gains.items():
        line, = ax.plot(gain.k, gain.mean_max, marker="o", label=f"RLHF-V{n} max of K")
        ax.plot(gain.k, gain.mean_median, linestyle="--", color=line.get_color(), label=f"RLHF-V{n} median")
    ax.set_xscale("log", base=2)
    ks = sorted({int(k) for g in gains.values() for k in g.k})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (samples per prompt)")
    ax.set_ylabel("reward")
    ax.set_title("Best-of-K: max vs median reward (Fig. 7)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_pool(iterations: list[dict], path: Path) -> None:
    """How many answers of each iteration's pool came from each iteration's samples."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sources = sorted({int(k) for it in iterations for k in it["rejection"]["pool_by_iteration"]})
    bottom = np.zeros(len(iterations))
    for source in sources:
        counts = np.array([it["rejection"]["pool_by_iteration"].get(str(source), 0) for it in iterations], float)
        ax.bar([f"pool of V{it['iteration']}" for it in iterations], counts, bottom=bottom,
               label=f"sampled in V{source}")
        bottom += counts
    ax.set_ylabel("prompts")
    ax.set_title("Rejection-sampling pool: where each best answer comes from")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_gatt(runs: list[tuple[int, dict]], path: Path) -> None:
    """Adherence to the system instruction per turn, before and after Ghost Attention (Table 30 as a plot);
    dashed: held-out constraints (zero-shot)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for n, g in runs:
        for model, style in (("before", ":"), ("after", "-")):
            curve = {int(t): v for t, v in g["adherence_by_turn"][model].items()}
            line, = ax.plot(sorted(curve), [curve[t] for t in sorted(curve)], linestyle=style, marker="o",
                            label=f"V{n} {model} GAtt (seen constraints)")
            zero = g.get("zero_shot_by_turn", {}).get(model)
            if zero:
                z = {int(t): v for t, v in zero.items()}
                ax.plot(sorted(z), [z[t] for t in sorted(z)], linestyle="--", marker="x", color=line.get_color(),
                        alpha=0.6, label=f"V{n} {model} GAtt (zero-shot constraints)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("turn of the dialogue")
    ax.set_ylabel("share of answers following the system instruction")
    ax.set_title("Ghost Attention: adherence per turn (Table 30)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    _save(fig, path)


# --------------------------------------------------------------------------------------------------
# the document: one function per section, in SECTIONS' order


@dataclass(frozen=True)
class Campaign:
    """What every section reads: the campaign directory, its summary and where plots go."""

    home: Path
    summary: dict
    plots: Path

    @property
    def iterations(self) -> list[dict]:
        return self.summary["iterations"]

    def step_file(self, iteration: int, contract: Outputs, name: str) -> Path:
        """A step output's file of ``iteration``, named by the step's contract."""
        return contract.dir(self.home / f"{ITERATION_PREFIX}{iteration}") / contract[name]


def _win_rows(iterations: list[dict]) -> list[list]:
    rows = []
    for it in iterations:
        for key, r in sorted(it["win_rate"].items()):
            rows.append([f"RLHF-V{it['iteration']}", key, pct(r["win"]), pct(r["tie"]), pct(r["loss"]),
                         pct(r["win_rate"]), ci(r), r["n"], pct(r.get("model_first_share")),
                         f"{pct(r.get('win_rate_when_first'))} / {pct(r.get('win_rate_when_second'))}"])
    return rows


def section_verdict(doc: Doc, c: Campaign) -> None:
    last = c.iterations[-1]
    final = f"RLHF-V{last['iteration']}"
    checks = [("sft/gold", "the SFT model"), ("sft/rm", "the SFT model")]
    if last["iteration"] > 1:
        checks.append(("previous/gold", f"RLHF-V{last['iteration'] - 1}"))
    references = sorted({k.split("/")[0] for k in last["win_rate"]} - {"sft", "previous"})
    checks += [(f"{ref}/gold", f"the reference model {ref!r}") for ref in references]
    for key, baseline in checks:
        doc.para(verdict(last["win_rate"].get(key), final, baseline))
    doc.para("The gold rater is the honest judge here: the reward models are what the policy was optimised "
             "against, so a win by the RM judge alone can be reward hacking.")


def section_win_rates(doc: Doc, c: Campaign) -> None:
    doc.para("Each model answers the same held-out prompts (no training step sees them) with the same sampling "
             "seed; a judge compares the two answers of each prompt, presented in a seeded random order "
             "(`model first` is the share where the model's answer came first; `when first / second` the win rate "
             "in each case: a judge that reads both answers -- the `pairwise` one -- shows its position bias "
             "there, a pointwise one only noise). Ties count half. The CI is a percentile bootstrap over prompts.")
    plot_win_rates(c.iterations, c.plots / "win_rates.png")
    doc.image("plots/win_rates.png", "win rate progression with 95 % CIs")
    doc.table(["iteration", "baseline/judge", "win", "tie", "loss", "win rate", "95 % CI", "n", "model first",
               "when first / second"], _win_rows(c.iterations))
    unparsed = [f"RLHF-V{it['iteration']} {key}: {r['unparsed']} of {r['n']}" for it in c.iterations
                for key, r in sorted(it["win_rate"].items()) if r.get("unparsed")]
    if unparsed:
        doc.para("Pairwise verdicts the judge's reply did not name (counted as ties): " + "; ".join(unparsed) + ".")


def section_system_prompt(doc: Doc, c: Campaign) -> None:
    rows = [[f"RLHF-V{it['iteration']}", key, _set_cell(r), _set_cell((it.get("win_rate_with_system") or {}).get(key))]
            for it in c.iterations if it.get("win_rate_with_system") for key, r in sorted(it["win_rate"].items())]
    if not rows:
        doc.para("Not measured in this campaign: `eval.system_prompt=\"...\"` has every model answer each evaluation "
                 "prompt a second time with that system prompt, and the win rates of both conditions appear here "
                 "(the paper's system-prompt comparison).")
        return
    prompt = (c.summary.get("config", {}).get("eval") or {}).get("system_prompt")
    doc.para(f"The same comparisons without and with the system prompt `{prompt}` (every model, the baseline too, "
             "answers with it); ties count half.")
    doc.table(["iteration", "baseline/judge", "without system prompt", "with system prompt"], rows)
    violations = [[f"RLHF-V{it['iteration']}", model, pct(v["rate"]),
                   pct(((it.get("violation_rate_with_system") or {}).get(model) or {}).get("rate"))]
                  for it in c.iterations if it.get("win_rate_with_system")
                  for model, v in (it.get("violation_rate") or {}).items() if v]
    if violations:
        doc.table(["iteration", "model", "violation rate without", "with system prompt"], violations)


def section_helpful_vs_safety(doc: Doc, c: Campaign) -> None:
    if plot_helpful_vs_safety(c.iterations, c.plots / "helpful_vs_safety.png"):
        doc.image("plots/helpful_vs_safety.png", "win rate vs SFT on the helpfulness and safety axes")
    else:
        doc.para("No Safety RM in this campaign (reward.train_safety=false): only the combined axis exists.")
    rows = [[f"RLHF-V{it['iteration']}", key, *(_set_cell(sets.get(name)) for name in PROMPT_SETS)]
            for it in c.iterations for key, sets in sorted((it.get("win_rate_by_set") or {}).items())]
    if rows:
        doc.para("Win rates on the helpfulness prompts and on the adversarial (safety) prompts of the evaluation set "
                 "apart, as the paper reported helpfulness and safety on separate prompt sets; ties count half.")
        doc.table(["iteration", "baseline/judge", "helpfulness prompts", "safety prompts"], rows)
    violations = [[f"RLHF-V{it['iteration']}", model, pct(v["rate"]), v["n"]]
                  for it in c.iterations for model, v in (it.get("violation_rate") or {}).items() if v]
    if violations:
        doc.para("Safety violation rate (Llama 2 Fig. 17): the share of adversarial evaluation prompts whose answer "
                 "complies instead of refusing, by the gold rater's refusal check; `model` is the iteration's policy.")
        doc.table(["iteration", "model", "violation rate", "adversarial prompts"], violations)


def _set_cell(result: dict | None) -> str:
    return "-" if result is None else f"{pct(result['win_rate'])} {ci(result)} (n={result['n']})"


def _accuracy_cells(acc: dict) -> list[str]:
    """Table 8 cells of one :func:`rlhf.record.summary.accuracy_entry`: each level's accuracy, 95 % interval and
    n, then the overall ones."""
    def cell(value, interval, n) -> str:
        ci = f" [{pct(interval[0])}, {pct(interval[1])}]" if interval else ""
        return f"{pct(value)}{ci} (n={n})"

    return [cell(acc["accuracy_by_level"][lv], acc.get("ci95_by_level", {}).get(lv), acc["n_by_level"][lv])
            for lv in LEVELS] + [cell(acc["accuracy"], acc.get("ci95"), acc["n_test"])]


SYNTHETIC_SETS = {"synthetic_seed": "synthetic seed pairs (held out)", "synthetic": "synthetic eval pairs",
                  "eval_data": "reward.eval_data"}


def section_reward_models(doc: Doc, c: Campaign) -> None:
    doc.para("Held-out accuracy by preference level (Llama 2 Table 8 layout) on the pairs labelled in this "
             "campaign, of each RM's own axis (the Helpfulness RM on helpfulness preferences, the Safety RM on "
             "safety preferences), every iteration's held-out share so far; 95 % Wilson intervals, n = test pairs. "
             "Rows marked synthetic are simulated-rater pairs, shown apart.")
    plot_rm_accuracy(c.iterations, c.plots / "rm_accuracy.png")
    doc.image("plots/rm_accuracy.png", "RM accuracy by preference level per iteration")
    header = ["RM", "iteration", "test pairs"] + [level.replace("_", " ") for level in LEVELS] + ["overall"]
    rows = []
    for it in c.iterations:
        for name, rm in it["reward"].items():
            rows.append([name, f"RLHF-V{it['iteration']}", f"labelled ({rm.get('axis') or 'pairs'})",
                         *_accuracy_cells(rm)])
            rows += [[name, f"RLHF-V{it['iteration']}", title, *_accuracy_cells(rm[key])]
                     for key, title in SYNTHETIC_SETS.items() if rm.get(key)]
    doc.table(header, rows)
    against_gold = [[name, f"RLHF-V{it['iteration']}", pct(rm["accuracy"]), pct(rm["label_ceiling"]),
                     pct(rm["gold_agreement"]), rm["n_gold_ordered"]]
                    for it in c.iterations for name, rm in it["reward"].items() if rm.get("label_ceiling") is not None]
    if against_gold:
        doc.para("The same held-out labelled pairs against the simulated rater's gold judge: the labels' ceiling is "
                 "the accuracy on these labels of an RM that orders every pair as the gold judge does (the rater's "
                 "noise keeps it below 100 %); gold agreement is the share of the pairs with a gold order (no gold "
                 "tie) that the RM orders the same way. Accuracy near the ceiling: the labels are the limit; gold "
                 "agreement near 50 %: the RM learnt little.")
        doc.table(["RM", "iteration", "accuracy", "labels' ceiling", "gold agreement", "pairs with a gold order"],
                  against_gold)
    ablated = [it for it in c.iterations if it.get("reward_ablation")]
    by_hand = [path for path in sorted(c.home.glob(f"{ITERATION_PREFIX}*/{RM_ABLATION.dirname}/"
                                                   f"{RM_ABLATION['table_csv']}"))
               if path.parent.parent.name not in {f"{ITERATION_PREFIX}{it['iteration']}" for it in ablated}]
    if not ablated and not by_hand:
        doc.para("No margin ablation in this campaign (`reward.ablate=true` runs one in every iteration, or in "
                 "those `campaign.ablate_at` lists, on the "
                 "campaign's SFT model and labelled pairs).")
    for path in by_hand:
        table = pd.read_csv(path)
        doc.para(f"Margin ablation (Table 28 layout) run by `rlhf rm ablate`, {path.parent.parent.name}:")
        doc.table(list(table.columns), table.values.tolist())
    for it in ablated:
        ablation = it["reward_ablation"]
        doc.para(f"Margin ablation (Table 28 layout), RLHF-V{it['iteration']}: Helpfulness RMs from the SFT model "
                 f"with no, the small and the large margin, {ablation['n_train']} training pairs, tested on the "
                 f"{ablation['test_set']}.")
        doc.table(["margin"] + [level.replace("_", " ") for level in LEVELS] + ["overall"],
                  [[variant, *_accuracy_cells(acc)] for variant, acc in ablation["variants"].items()])


def section_pairs(doc: Doc, c: Campaign) -> None:
    doc.para("The pairs collected each iteration for the annotator, by level, and by where each answer came from "
             "(`collect.variants` and `collect.temperatures`): the share of its pairs in which that source's "
             "answer was preferred, and on adversarial prompts the share in which it was the safer one.")
    its = [it for it in c.iterations if it.get("pairs")]
    doc.table(["iteration", "pairs"] + [level.replace("_", " ") for level in LEVELS],
              [[f"RLHF-V{it['iteration']}", it["pairs"]["collected"]]
               + [it["pairs"]["levels"].get(level, 0) for level in LEVELS] for it in its])
    rows = [[f"RLHF-V{it['iteration']}", source, v["n"], pct(v["preferred"]), v["n_safety"], pct(v["safer"])]
            for it in its for source, v in (it["pairs"].get("by_variant") or {}).items()]
    if rows:
        doc.table(["iteration", "answers from", "pairs", "preferred", "adversarial pairs", "safer"], rows)
    else:
        doc.para("These pairs do not record where their answers came from.")


def section_temperature(doc: Doc, c: Campaign) -> None:
    its = c.iterations
    plot_temperature(its, c.plots / "temperature.png")
    doc.image("plots/temperature.png", "max-of-K reward against temperature per iteration")
    temps = sorted({float(t) for it in its for t in it["temperature"]["curve"]})
    doc.table(["iteration", "chosen T"] + [f"T={t:g}" for t in temps],
              [[f"RLHF-V{it['iteration']}", f"{it['temperature']['chosen']:g}"]
               + [_num({float(k): v for k, v in it["temperature"]["curve"].items()}.get(t)) for t in temps]
               for it in its])


def section_best_of_k(doc: Doc, c: Campaign) -> None:
    gains = {it["iteration"]: pd.read_csv(path) for it in c.iterations
             if (path := c.step_file(it["iteration"], REJECTION_SAMPLE, "gain")).is_file()}
    if not gains:
        doc.para("The rejection-sampling outputs with the gain tables are not on disk.")
        return
    plot_best_of_k(gains, c.plots / "best_of_k.png")
    doc.image("plots/best_of_k.png", "best-of-K max and median reward against K")
    doc.table(["iteration", "K", "mean max of K", "mean median", "gain"],
              [[f"RLHF-V{n}", int(r.k), _num(r.mean_max), _num(r.mean_median), _num(r.gain)]
               for n, g in gains.items() for r in g.itertuples()])


def section_pool(doc: Doc, c: Campaign) -> None:
    its = c.iterations
    pool_from = c.summary.get("config", {}).get("rejection", {}).get("pool_from", 1)
    doc.para("The pool keeps, per prompt, the best answer of every iteration so far, all re-scored by the "
             "current reward models" + (f"; before RLHF-V{pool_from} (`rejection.pool_from`), of the "
                                        "iteration's own samples only." if pool_from > 1 else "."))
    plot_pool(its, c.plots / "pool.png")
    doc.image("plots/pool.png", "pool composition by source iteration")
    sources = sorted({int(k) for it in its for k in it["rejection"]["pool_by_iteration"]})
    doc.table(["iteration", "K", "T", "pool size", "pool mean score"] + [f"from V{s}" for s in sources],
              [[f"RLHF-V{it['iteration']}", it["rejection"]["k"], f"{it['rejection'].get('temperature', '-')}",
                it["rejection"]["pool_size"], _num(it["rejection"]["pool_mean_score"])]
               + [it["rejection"]["pool_by_iteration"].get(str(s), 0) for s in sources] for it in its])


def section_student(doc: Doc, c: Campaign) -> None:
    its = [it for it in c.iterations if it.get("student")]
    if not its:
        doc.para("No distilled student in this campaign (`rejection.student=<model>` fine-tunes one on every "
                 "iteration's pool beside the policy, which stays the teacher).")
        return
    doc.para("The student (`rejection.student`) is fine-tuned on each iteration's rejection-sampling pool from its "
             "previous iteration's weights, as the paper distilled its smaller models from the largest one's "
             "samples; the policy stays the teacher. Win rates of the student against the SFT model and against the "
             "teacher (the iteration's final policy), on the evaluation prompts.")
    doc.table(["iteration", "baseline/judge", "win", "tie", "loss", "win rate", "95 % CI", "n", "model first"],
              _win_rows([{"iteration": it["iteration"], "win_rate": it["student"]["win_rate"]} for it in its]))


def section_ppo(doc: Doc, c: Campaign) -> None:
    ran = [(it["iteration"], it["ppo"]) for it in c.iterations if it.get("ppo")]
    if not ran:
        doc.para("PPO did not run in this campaign (campaign.ppo_at is empty).")
        return
    fields = sorted({k for _, m in ran for k, v in m.items() if isinstance(v, (int, float, bool, str))})

    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else value

    doc.table(["iteration"] + fields, [[f"RLHF-V{n}"] + [cell(m.get(f, "-")) for f in fields] for n, m in ran])


def section_gatt(doc: Doc, c: Campaign) -> None:
    runs = [(it["iteration"], it["gatt"]) for it in c.iterations if it.get("gatt")]
    if not runs:
        doc.para("Ghost Attention did not run in this campaign (campaign.gatt_from is unset): no adherence to report.")
        return
    doc.para("Held-out dialogues, the instruction in the system message only; the model answers turn after turn "
             "and the constraint's checker judges each answer. Share of dialogues whose answer at each turn follows "
             "the instruction (Llama 2 Table 30 layout), before and after the GAtt fine-tune; zero-shot = constraints "
             "never used in training (mean over turns).")
    if any(g.get("mix_into") == "pool" for _, g in runs):
        doc.para("gatt.mix_into=pool: the dialogues were mixed into the iteration's fine-tune on the pool (no GAtt "
                 "step of its own); `before` is the policy the iteration started from, `after` its final policy.")
    plot_gatt(runs, c.plots / "gatt_adherence.png")
    doc.image("plots/gatt_adherence.png", "adherence per turn before and after Ghost Attention")
    turns = sorted({int(t) for _, g in runs for t in g["adherence_by_turn"]["before"]})
    rows = []
    for n, g in runs:
        for model in ("before", "after"):
            curve = g["adherence_by_turn"][model]
            mixed = " (mixed into the pool)" if g.get("mix_into") == "pool" and model == "after" else ""
            rows.append([f"RLHF-V{n}", f"{model} GAtt{mixed}"] + [pct(curve.get(str(t))) for t in turns]
                        + [pct(g["zero_shot"][model]), g["n_dialogues"]])
    doc.table(["iteration", "model"] + [f"turn {t}" for t in turns] + ["zero-shot", "training dialogues"], rows)


def _examples(c: Campaign) -> list[tuple[str, list[tuple[str, str]]]]:
    """For the first few held-out prompts: the SFT model's answer and each iteration's, side by side."""
    frames = {it["iteration"]: pd.read_parquet(path) for it in c.iterations
              if (path := c.step_file(it["iteration"], EVALUATE, "answers")).is_file()}
    if not frames:
        return []
    first = frames[min(frames)]
    out = []
    for pid in list(dict.fromkeys(first.prompt_id))[:N_EXAMPLES]:
        sft = first[(first.prompt_id == pid) & (first.model == "sft")]
        row = first[first.prompt_id == pid].iloc[0]
        answers = [("SFT", sft.text.iloc[0])] if len(sft) else []
        for n, frame in frames.items():
            mine = frame[(frame.prompt_id == pid) & (frame.model == "model")]
            if len(mine):
                answers.append((f"RLHF-V{n}", mine.text.iloc[0]))
        out.append((str(row.get("prompt", pid)), answers))
    return out


def section_examples(doc: Doc, c: Campaign) -> None:
    examples = _examples(c)
    if not examples:
        doc.para("The evaluate steps' answers are not on disk.")
    for i, (prompt, answers) in enumerate(examples, 1):
        doc.quote(f"Prompt {i}", prompt)
        for label, text in answers:
            doc.quote(label, text)


def section_provenance(doc: Doc, c: Campaign) -> None:
    import yaml

    summary, its = c.summary, c.iterations
    machine = summary.get("machine") or {}
    where = (f"{machine['cpu']}, {machine['cores']} cores (fast bf16: {'yes' if machine['fast_bf16'] else 'no'}), "
             f"torch {machine['torch']}, {machine['precision']}") if machine else "-"
    total = sum(sum(it["wall_seconds"].values()) for it in its)
    doc.table(["", ""], [["campaign", summary["campaign"]], ["experiment", summary.get("experiment", "-")],
                         ["code version", summary["code_version"]],
                         ["git commit (of the checkout writing this report)", _git_commit()],
                         ["machine", where],
                         ["wall time of the iterations' steps", f"{total / 60:.1f} min (SFT and seed pairs aside)"],
                         ["report written", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())],
                         ["MLflow campaign run", summary.get("mlflow_run_id", "-")],
                         ["tracking URI", summary.get("tracking_uri", "-")],
                         ["campaign directory", summary.get("campaign_dir", str(c.home))]])
    steps = sorted({step for it in its for step in it["wall_seconds"]})
    doc.para("Wall time per step (a cached step: the seconds it took when it ran):")
    doc.table(["iteration"] + steps, [[f"RLHF-V{it['iteration']}"] + [f"{it['wall_seconds'].get(step, 0):.1f} s"
                                                                      for step in steps] for it in its])
    if any(it.get("peak_rss_mb") for it in its):
        doc.para("Peak resident memory per step (of the process that ran it; rank 0 of a launched step):")
        doc.table(["iteration"] + steps, [[f"RLHF-V{it['iteration']}"] + [
            f"{it['peak_rss_mb'][step] / 1024:.2f} GB" if step in (it.get("peak_rss_mb") or {}) else "-"
            for step in steps] for it in its])
    doc.para("The resolved config:")
    doc.code(yaml.safe_dump(summary["config"], sort_keys=False))


def _git_commit() -> str:
    """The commit of the checkout this code runs from (``-dirty`` with uncommitted changes), or ``-``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return commit + ("-dirty" if dirty else "")


# Each heading names the figure or table of the Llama 2 paper (Touvron et al. 2023) the section reproduces.
SECTIONS = {"Verdict": section_verdict, "Win rates (Fig. 11)": section_win_rates,
            "Helpfulness vs safety (Fig. 11, Fig. 17)": section_helpful_vs_safety,
            "System prompt": section_system_prompt, "Preference pairs (§3.2.1)": section_pairs,
            "Reward model accuracy (Table 8, Table 28)": section_reward_models,
            "Temperature search (Fig. 8)": section_temperature, "Best-of-K gain (Fig. 7)": section_best_of_k,
            "Rejection-sampling pool (§3.2.3)": section_pool, "Distilled student": section_student,
            "PPO": section_ppo, "Ghost Attention adherence (Table 30)": section_gatt,
            "Example answers": section_examples, "Provenance": section_provenance}


def build(home: Path, plots: Path) -> Doc:
    """The report of the campaign in ``home``; its figures are written into ``plots``."""
    summary = read_summary(home)
    if summary is None or not summary.get("iterations"):
        raise RLHFError(f"no finished iteration in {home} (summary.json missing or empty): run the campaign first, "
                        "e.g. `rlhf run campaign.name=...`")
    doc = Doc(f"RLHF campaign report: {summary['campaign']}")
    doc.para(f"Campaign `{summary['campaign']}`: SFT then {len(summary['iterations'])} RLHF iteration(s). Code "
             f"version `{summary['code_version']}`. Every number below is read from `summary.json`, which holds "
             "the same values as the MLflow runs (metrics logged with step = iteration).")
    campaign = Campaign(Path(home), summary, plots)
    for title, section in SECTIONS.items():
        doc.heading(title)
        section(doc, campaign)
    return doc


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def write_report(home: Path) -> Path:
    """Build ``<home>/report`` (Markdown, HTML, PNGs) in a temp directory, then swap it in; returns the
    path of ``report.md``."""
    home = Path(home)
    with atomic_dir(home / REPORT_DIR) as tmp:
        (tmp / "plots").mkdir()
        doc = build(home, tmp / "plots")
        (tmp / "report.md").write_text(doc.markdown())
        (tmp / "report.html").write_text(doc.html(base=tmp))
    return home / REPORT_DIR / "report.md"


def copy_report(report: Path, dest: Path) -> Path:
    """A copy of the report directory ``report`` at ``dest`` to commit: the Markdown and its PNG plots (not
    the HTML, whose plots are inlined: the same images twice), replacing what was there (written beside it,
    then renamed); returns ``dest``."""
    import shutil

    with atomic_dir(dest) as tmp:
        shutil.copytree(report, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.html"))
    return dest
