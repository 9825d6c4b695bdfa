"""benchmarks/README.md's race tables, regenerated from the result JSON in ``benchmarks/results/``.

    python -m benchmarks.tables          # rewrites every <!-- table:NAME --> ... <!-- /table:NAME --> block

A block whose result file is missing is left as it is. Each table names the machine and date the JSON
records, every throughput with its MFU (a fraction of the matmul peak measured in the same run) and each
contender's peak memory (its own process).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).parent
README = HERE / "README.md"
RESULTS = HERE / "results"


def _machine(result: dict) -> str:
    m = result.get("machine", {})
    cpu = m.get("cpu") or m.get("cpu_model") or "unknown CPU"
    cores = m.get("cores") or m.get("usable_cores") or "?"
    bf16 = " with fast bf16 (AVX512-BF16/AMX)" if m.get("fast_bf16") or m.get("cpu_fast_bf16") else " (no fast bf16)"
    return f"{cpu}{bf16}, {cores} cores, torch {m.get('torch', '?')}"


def sampling(result: dict) -> str:
    peak = result["peak_gflops"]
    cfg = result["config"]
    rows = [f"Measured {result.get('created', '')[:10]} on {_machine(result)}, {result['precision']}; "
            f"{cfg['prompts']} prompts x K={cfg['k']} x <= {cfg['max_new_tokens']} new tokens, temperature "
            f"{cfg['temperature']}, no top-k, top-p {cfg['top_p']}; median of {cfg['reps']} interleaved runs "
            f"(per-prompt loop: 1). Matmul peak in this run: {peak['decode']:.0f} GFLOP/s at the decode shapes, "
            f"{peak['square']:.0f} at 2048^3.", "",
            "| contender | tokens/s (runs) | MFU (decode-shape peak) | MFU (2048^3 peak) | peak RSS |",
            "|---|---|---|---|---|"]
    labels = {"ours": "ours (engine)", "hf_batched": "HF `generate`, batched (the peer)",
              "hf_per_prompt": "HF `generate` per prompt (extra row, not the race)"}
    for name, c in result["contenders"].items():
        runs = ", ".join(f"{x:.0f}" for x in c["tokens_per_s_runs"])
        rows.append(f"| {labels.get(name, name)} | **{c['tokens_per_s']:.0f}** ({runs}) | {100 * c['mfu']:.0f} % | "
                    f"{100 * c['mfu_square']:.0f} % | {c['peak_rss_mb'] / 1024:.1f} GB |")
    rows += ["", f"ours / hf_batched: **{result['ratio_ours_over_hf_batched']:.2f}x**; ours / per-prompt loop: "
                 f"{result['ratio_ours_over_hf_per_prompt']:.1f}x."]
    return "\n".join(rows)


def rm(result: dict) -> str:
    config = next(iter(result["precisions"].values()))["config"]
    reps = config.get("reps", 2)
    median = f"of {reps}" + (", the faster of the middle two" if reps % 2 == 0 else "")  # race(): upper median
    rows = [f"Measured {result['created'][:10]} on {_machine(result)}; {result['data']}, batch "
            f"{config['batch_size']} pairs, each run in its own process, "
            f"interleaved; the median run ({median}), for every contender alike.", "",
            "| precision | contender | pairs/s (runs) | MFU | padded | peak RSS |", "|---|---|---|---|---|---|"]
    labels = {"ours_unpacked": "ours_unpacked (extra row: packing off, not a peer)"}
    for precision, raced in result["precisions"].items():
        for name, c in raced["contenders"].items():
            runs = ", ".join(f"{x:.2f}" for x in c["pairs_per_s_runs"])
            rows.append(f"| {precision} (peak {raced['peak_gflops']['square']:.0f} GFLOP/s) | "
                        f"{labels.get(name, name)} | "
                        f"**{c['pairs_per_s']:.2f}** ({runs}) | {100 * c['mfu']:.0f} % | "
                        f"{100 * c['padded_share']:.0f} % | {c['peak_rss_mb'] / 1024:.1f} GB |")
    for precision, raced in result["precisions"].items():
        ratios = ", ".join(f"ours / {k.removeprefix('ratio_ours_over_')} **{v:.2f}x**" for k, v in raced.items()
                           if k.startswith("ratio_ours_over_"))
        rows.append(f"\n{precision}: {ratios}.")
    return "\n".join(rows)


def ppo(result: dict) -> str:
    cfg = result["config"]
    rows = [f"Measured {result.get('created', '')[:10]} on {_machine(result)}; {cfg['batch_size']} rollouts x <= "
            f"{cfg['max_new_tokens']} tokens, "
            f"{cfg['batch_size'] // cfg['mini_batch_size']} gradient steps, mean of {cfg['timed']} iterations.", "",
            "| precision | rollout | scoring | update | update MFU (floor at the peak) | seconds per iteration "
            "| matmul peak |",
            "|---|---|---|---|---|---|---|"]
    for precision, m in result["precisions"].items():
        peak = result.get("peak_gflops", {}).get(precision)
        mfu = f"{100 * m['update_mfu']:.0f} % ({m['update_s_at_peak']:.1f} s)" if "update_mfu" in m else "-"
        rows.append(f"| {precision} | {m['rollout_s']:.1f} s | {m['score_s']:.1f} s | {m['update_s']:.1f} s | {mfu} | "
                    f"**{m['seconds_per_iteration']:.1f} s** | {f'{peak:.0f} GFLOP/s' if peak else '-'} |")
    return "\n".join(rows)


def sft(result: dict) -> str:
    cfg, peak = result["config"], result["peak_gflops"]["square"]
    rows = [f"Measured {result['created'][:10]} on {_machine(result)}, {cfg['precision']}; {cfg['data']}, batch "
            f"{cfg['batch_size']}, {cfg['timed_steps']} timed steps after {cfg['warmup_steps']} warm-up, "
            f"{cfg['schedule']}; TRL batches: {cfg['trl_sampling']}. Matmul peak in this run: {peak:.0f} GFLOP/s "
            "(2048^3).", "",
            "| contender | real tokens/s | MFU | padded | median step | optimizer |", "|---|---|---|---|---|---|"]
    for name, c in result["contenders"].items():
        rows.append(f"| {name} | **{c['tokens_per_s']:.1f}** | {100 * c['mfu']:.0f} % | "
                    f"{100 * c['padded_share']:.0f} % | {c['median_step_seconds']:.2f} s | "
                    f"{c['optimizer']['class']} |")
    rows.append(f"\nours / TRL: **{result['ratio_ours_over_trl']:.2f}x** real tokens/s "
                f"({result['ratio_per_cpu_second_ours_over_trl']:.2f}x per CPU-second).")
    return "\n".join(rows)


TABLES = {"sampling_throughput": sampling, "rm_throughput": rm, "ppo_step": ppo, "sft_throughput": sft}


def regenerate(readme: Path = README, results: Path = RESULTS) -> list[str]:
    """Rewrite each table block whose JSON exists; returns the names rewritten."""
    text, done = readme.read_text(), []
    for name, render in TABLES.items():
        path = results / f"{name}.json"
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table:{name} -->)", re.S)
        if path.is_file() and pattern.search(text):
            table = render(json.loads(path.read_text()))
            text = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), text)
            done.append(name)
    readme.write_text(text)
    return done


if __name__ == "__main__":
    print("regenerated:", ", ".join(regenerate()) or "nothing")
