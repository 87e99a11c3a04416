"""The bridge to the standard suite: lm-evaluation-harness's tasks run on an exported Hugging Face model folder, and
their figures flattened into one metrics file (`<task>_<metric>`, e.g. `hellaswag_acc_norm`, `arc_easy_acc`).

The harness is an optional dependency: nothing here imports it until a task is asked for. Its `hf` model loads the
folder with transformers, exactly as a user running `lm_eval --model hf` on the export would, so the figures are the
ones the harness reports, with its own prompts, preprocessing and metrics.
"""

from __future__ import annotations

from pathlib import Path

INSTALL = "pip install 'lm-eval[hf]>=0.4.13,<0.5'"


def require():
    """lm-evaluation-harness's entry points, or the error that names its install command (checked before any work)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ValueError(f"eval.harness_tasks names tasks, but lm-evaluation-harness cannot be imported ({e}); "
                         f"{INSTALL} (or set eval.harness_tasks: [] to skip the stage's work)") from None
    return lm_eval, HFLM, TaskManager


def run(hf_dir: str | Path, tasks: list[str], limit: int = 0, include: str = "", batch_size: int = 32,
        device: str = "cpu") -> dict:
    """The harness's report for `tasks` on the model folder (results, item counts, versions; no samples)."""
    lm_eval, HFLM, TaskManager = require()
    if include and not Path(include).is_dir():
        raise ValueError(f"eval.harness_include: {include!r} is not a folder; give a folder of task .yaml files "
                         "or ''")
    manager = TaskManager(include_path=include or None)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"eval.harness_tasks: lm-evaluation-harness has no task {unknown[0]!r}; list its tasks with "
                         "`lm-eval ls tasks` (add --include_path for eval.harness_include)")
    model = HFLM(pretrained=str(hf_dir), dtype="auto", batch_size=batch_size, device=device)
    try:
        out = lm_eval.simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit or None,
                                      log_samples=False)
    except (ConnectionError, OSError) as e:  # the task's dataset is downloaded from the hub on first use
        raise ValueError(f"lm-evaluation-harness could not load a dataset of eval.harness_tasks "
                         f"({type(e).__name__}: {e}); run where the Hugging Face hub is reachable (the datasets are "
                         "cached in HF_DATASETS_CACHE and then work offline), or set eval.harness_tasks: []") from None
    return {key: out.get(key) for key in ("results", "n-samples", "n-shot", "versions", "lm_eval_version")} | {
        "limit": limit}


def flatten(report: dict) -> dict:
    """`<task>_<metric>` -> value for every task (and group) in the report, plus `<task>_num_items`. Standard errors
    stay in the report; a metric under a filter other than `none` gets the filter's name appended."""
    metrics: dict = {}
    for task, results in (report.get("results") or {}).items():
        for key, value in results.items():
            name, _, filt = key.partition(",")
            if not filt or name.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metrics[f"{task}_{name}" + ("" if filt == "none" else f"_{filt}")] = value
        counted = (report.get("n-samples") or {}).get(task)
        if counted:
            metrics[f"{task}_num_items"] = counted["effective"]
    return metrics
