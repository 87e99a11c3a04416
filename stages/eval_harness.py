"""Stage eval_harness: lm-evaluation-harness's tasks (eval.harness_tasks) on the model, exported to a Hugging Face
folder -> metrics/harness.json (`<task>_<metric>`, e.g. hellaswag_acc_norm) and the harness's report beside it.
Off by default: with eval.harness_tasks: [] it writes both files empty and imports neither the harness nor torch."""

import argparse
import tempfile
from pathlib import Path

from llm_core import cli, figures
from llm_core.config import load_params
from llm_core.files import write_json, write_metrics


def run_tasks(args, params) -> dict:
    """Export the model with its tokenizer to a temporary folder and run the harness on it."""
    from llm_core.evaluation import harness

    harness.require()  # before any work: a missing harness names its install command
    import torch

    from llm_core import export
    from llm_core.model.io import load_model

    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        raise ValueError(f"{args.tokenizer} has no Hugging Face tokenizer files (tokenizer.source is a pretrained "
                         "tiktoken encoding), which the harness needs next to the model; use tokenizer.source: "
                         "train, or run lm_eval yourself on an export paired with the encoding's Hugging Face "
                         "tokenizer")
    model = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="eval_harness-") as tmp:
        export.export_hf(model, Path(tmp) / "hf", tokenizer_dir=args.tokenizer)
        del model
        ev = params.eval
        return harness.run(Path(tmp) / "hf", ev.harness_tasks, ev.harness_limit, ev.harness_include,
                           ev.batch_size, "cuda" if torch.cuda.is_available() else "cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--metrics", required=True, help="the flat figures, e.g. metrics/harness.json")
    ap.add_argument("--report", required=True, help="the harness's results, counts and versions (.json)")
    args = ap.parse_args()
    params = load_params()
    report = run_tasks(args, params) if params.eval.harness_tasks else {}
    if report:
        from llm_core.evaluation.harness import flatten

        metrics = flatten(report)
    else:
        metrics = {}
    write_json(args.report, report)
    write_metrics(args.metrics, metrics)
    print(f"eval_harness: {figures.line(metrics) if metrics else 'eval.harness_tasks is empty: nothing to run'}")


if __name__ == "__main__":
    cli.run("eval_harness", main)
