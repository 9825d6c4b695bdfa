"""`rlhf annotate` labels a pairs file with the simulated rater, and names a missing input clearly."""

import json

import pandas as pd

from rlhf.cli import main
from rlhf.core.rater import make_prompts


def test_annotate_labels_pairs_with_the_simulated_rater(tmp_path):
    prompts = make_prompts(6, split="train", seed=0, unsafe_share=0.0, lookalike_share=0.0)
    rows = []
    for i, p in enumerate(prompts.itertuples()):
        rows.append({"pair_id": f"p{i}", "prompt_id": p.prompt_id, "prompt": list(p.messages),
                     "response_a": "", "response_b": "A complete and useful answer about the topic.",
                     "instructions": p.instructions, "safety": bool(p.safety), "source": "test",
                     "iteration": 0})
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["annotate", f"io.input={source}", "annotator.rater.noise=0"]) == 0
    labelled = pd.read_parquet(tmp_path / "pairs.labelled.parquet")
    assert len(labelled) == 6 and set(labelled.annotator) == {"simulated"}
    # With a perfect rater the empty answer never wins.
    assert (labelled.rejected == "").all()


def test_annotate_without_input_names_the_key(capsys):
    assert main(["annotate"]) == 2
    assert "io.input" in capsys.readouterr().err
