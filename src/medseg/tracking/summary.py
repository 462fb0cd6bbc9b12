"""What an invocation's parent run says in the MLflow UI: its description (``mlflow.note.content``),
every model's mean test scores, rebuilt from the parent's ``test/<model>/...``
metrics each time an aggregation's scores arrive; and a shared view of the experiment's runs table
(``#/experiments/<id>/runs?viewStateShareKey=test-scores``) listing the invocations with the
settings that differ between them and their test scores as columns, since MLflow's runs table
shows no metric column by default."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from medseg.tracking import TEST_PREFIX

# (metric, title, format, unit) of the description's scores; structures as the results name them
METRICS = (("dice", "Dice", "{:.3f}", ""), ("hd95", "HD95", "{:.1f}", " mm"))
# MLflow UI's shared runs-table views: an experiment tag holding the view's state (JSON); columns are
# named "<metrics|params|attributes>.`<key>`", widths in pixels (wide enough for the whole name)
VIEW_KEY = "test-scores"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
INVOCATIONS_FILTER = "tags.`medseg.kind` = 'invocation'"
RUN_NAME_COLUMN = "attributes.`Run Name`"
MAX_PARAM_COLUMNS = 8


def test_scores_by_model(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{model: {"dice_WT": 0.81, "n_cases": 3, ...}}`` from a parent run's ``test/<model>/<name>`` metrics."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(TEST_PREFIX) and key.count("/") == 2:
            _, model, name = key.split("/")
            out.setdefault(model, {})[name] = value
    return out


def _structures(names: set[str], metric: str, order: Sequence[str] = ()) -> list[str]:
    """The score names of ``metric`` to show: the regions (or the labels of a task without regions), in
    the order of ``order`` (the task's structures: WT, TC, ET), others after."""
    rank = {n: i for i, n in enumerate(order)}
    keys = sorted((n for n in names if n.startswith(f"{metric}_")),
                  key=lambda n: (rank.get(n[len(metric) + 1:], len(rank)), n))
    return [k for k in keys if not k.startswith(f"{metric}_label_")] or keys


def differing_params(runs_params: Sequence[Mapping[str, str]]) -> list[str]:
    """The params whose values differ between runs (absent counts as a value), sorted, at most
    :data:`MAX_PARAM_COLUMNS`: the settings that tell invocations apart."""
    keys = sorted({k for p in runs_params for k in p})
    return [k for k in keys if len({p.get(k) for p in runs_params}) > 1][:MAX_PARAM_COLUMNS]


def view_link(experiment_id: str) -> str:
    """The UI address (after the server's ``/``) of the experiment's test-scores view."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def view_state(scores: Mapping[str, Mapping[str, float]], previous: str | None = None,
               params: Sequence[str] = (), order: Sequence[str] = ()) -> str:
    """The runs-table view (the MLflow UI's shared view state, JSON): invocations only; as columns the
    ``params`` that differ between them, then each model's test case count and Dice (the ``previous``
    view's metric columns kept: models of earlier invocations)."""
    try:
        kept = [c for c in json.loads(previous)["selectedColumns"] if c.startswith("metrics.")] if previous else []
    except (ValueError, KeyError, TypeError):
        kept = []
    new = [f"metrics.`{TEST_PREFIX}{model}/{key}`" for model in sorted(scores)
           for key in ("n_cases", *_structures(set(scores[model]), "dice", order))]
    columns = [*(f"params.`{p}`" for p in params), *kept, *(c for c in new if c not in kept)]
    widths = {c: max(90, 8 * len(c.split("`")[1]) + 32) for c in columns} | {RUN_NAME_COLUMN: 300}
    return json.dumps({"searchFilter": INVOCATIONS_FILTER, "orderByKey": "attributes.start_time", "orderByAsc": False,
                       "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
                       "columnWidths": widths})


def parent_note(dataset: str, scores: Mapping[str, Mapping[str, float]], results: Mapping[str, str | None],
                models: Mapping[str, tuple[str, str]], link: str | None = None, order: Sequence[str] = ()) -> str:
    """The parent run's description (Markdown): a line of scores per model first (the UI shows the first lines).

    Args:
        dataset: the experiment's dataset.
        scores: :func:`test_scores_by_model` of the parent run.
        results: model -> its results JSON (or None).
        models: model -> ``(name, uri)`` of its MLflow model (``models:/brats_timm/latest`` when registered),
            for models that have one.
        link: the UI address of the runs table comparing the invocations (:func:`view_link`).
        order: the task's structures in its order (``WT``, ``TC``, ``ET``).
    """
    lines = [f"**{dataset}: mean test scores**", ""]
    for model in sorted(scores):
        s = scores[model]
        n = s.get("n_cases")
        parts = []
        for metric, title, fmt, unit in METRICS:
            if keys := _structures(set(s), metric, order):
                values = " · ".join(f"{k[len(metric) + 1:].removeprefix('label_')} {fmt.format(s[k])}" for k in keys)
                parts.append(f"{title} {values}{unit}")
        lines.append(f"- **{model}** ({int(n) if n is not None else '?'} test cases): " + "; ".join(parts))
        where = [f"results `{results[model]}`"] if results.get(model) else []
        if model in models:
            name, uri = models[model]
            where.append(f"MLflow model `{name}`: `mlflow.pyfunc.load_model(\"{uri}\")`")
        if where:
            lines.append("  - " + "; ".join(where))
    if link:
        lines += ["", f"[Compare the invocations]({link}): their differing settings and test scores side by side."]
    return "\n".join(lines).rstrip() + "\n"
