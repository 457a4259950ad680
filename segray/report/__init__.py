"""`segray report RUN_DIR`: one self-contained ``report.html`` for any segray output folder.

    path = write_report("runs/tune")                 # -> runs/tune/report.html
    write_report("s3://b/seg", output="seg.html", gallery=24, seed=1)

The kind of folder is found from its files (`segray.report.rundir.KINDS`): a search
(`segray tune`), a training run (`segray train`), an evaluation (`segray evaluate`), a bulk
segmentation (`segray segment`) or a demo folder (tune/ + eval/ + segment/, one section each).
The page embeds its images and scripts, so it opens with no network; a bulk segmentation is
sampled for its galleries, never read whole (`segray.report.segment`).

One module per kind of run: `search`, `training` (train and evaluation), `segment`; `html`
builds the page, `plots` the figures and `overlay` the mask overlays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segray.report.rundir import DEMO_PARTS, KINDS, ReportError, RunDir, detect_kind, log

__all__ = ["KINDS", "ReportError", "detect_kind", "write_report"]

REPORT_FILE = "report.html"
_TITLES = {
    "auto": "segray auto",
    "demo": "segray demo",
    "search": "segray search",
    "train": "segray training run",
    "evaluation": "segray evaluation",
    "segment": "segray bulk segmentation",
}


def write_report(
    run_dir: str | Path,
    output: str | Path | None = None,
    *,
    gallery: int = 12,
    seed: int = 0,
) -> str:
    """Write the report of ``run_dir`` and return where it went (a path or a URI).

    Args:
        run_dir: a segray output folder, a local path or a URI (``s3://...``).
        output: the HTML file to write; default ``RUN_DIR/report.html``.
        gallery: images in each gallery of a bulk segmentation.
        seed: seed of the random gallery (the same report for the same output).

    Raises:
        ReportError: ``run_dir`` is missing or not a segray output folder.
    """
    from segray.storage import published_file

    if gallery < 0:
        raise ReportError(f"--gallery must be >= 0, got {gallery}")
    run = RunDir.open(str(run_dir))
    log(f"{run.uri}: {run.kind} output")
    page = build_page(run, gallery=gallery, seed=seed)
    target = str(output) if output is not None else run.loc.join(REPORT_FILE).uri
    with published_file(target) as local:
        local.write_text(page.render(), encoding="utf-8")
    return target


def build_page(run: RunDir, *, gallery: int = 12, seed: int = 0) -> Any:
    """The `html.Page` of ``run`` (every section of a demo folder)."""
    from segray.report import html
    from segray.report.search import search_section
    from segray.report.segment import segment_section
    from segray.report.training import evaluation_section, training_section

    page = html.Page(_TITLES[run.kind], source=run.uri)
    parts = [run]
    if run.kind in ("auto", "demo"):
        parts = [p for p in (run.sub(name) for name in DEMO_PARTS) if p]
        summary = run.maybe_json("demo_summary.json")
        if summary:
            page.section("overview", "Overview", _demo_overview(summary))
        summary = run.maybe_json("auto_summary.json")
        if summary:
            page.section("overview", "Overview", _auto_overview(summary))
        plan = run.maybe_json("plan.json")
        if plan:
            page.section("plan", "Derived config and plan", _plan(plan))
    for part in parts:
        log(f"{part.kind}: {part.uri}")
        if part.kind == "search":
            search_section(part, page)
        elif part.kind == "train":
            training_section(part, page)
        elif part.kind == "evaluation":
            evaluation_section(part, page)
        elif part.kind == "segment":
            segment_section(part, page, gallery=gallery, seed=seed)
    return page


def _demo_overview(summary: dict[str, Any]) -> list[str]:
    from segray.report import html

    ev, seg = summary.get("eval") or {}, summary.get("segment") or {}
    return [
        html.cards(
            {
                "trials": summary.get("trials"),
                "stopped early": summary.get("stopped_early"),
                "best val Dice": summary.get("best_val_dice"),
                f"test Dice ({ev.get('num_images', '?')} images)": ev.get("dice"),
                "segmented ok": seg.get("ok"),
                "error rows": seg.get("error"),
                "wall time (s)": summary.get("wall_time_s"),
            }
        ),
        html.heading("Best parameters"),
        html.kv_table(summary.get("best_params") or {}),
    ]


def _auto_overview(summary: dict[str, Any]) -> list[str]:
    from segray.report import html

    search, test = summary.get("search") or {}, summary.get("test") or {}
    seg, cv = summary.get("segment") or {}, summary.get("cv") or {}
    times = summary.get("wall_time_s") or {}
    cards = {
        "trials": search.get("trials"),
        "stopped early": search.get("stopped_early"),
        f"best {search.get('metric', 'val')}": search.get("best_val"),
        f"test Dice ({test.get('num_images', '?')} images)": test.get("dice"),
        "final model": (summary.get("model") or {}).get("kind"),
        "wall time (s)": times.get("total"),
    }
    if cv.get("oof_dice") is not None:
        cards["CV out-of-fold Dice"] = cv.get("oof_dice")
    if seg:
        cards |= {"segmented ok": seg.get("ok"), "error rows": seg.get("error")}
    parts = [html.cards(cards), html.heading("Best parameters")]
    parts.append(html.kv_table(search.get("best_params") or {}))
    if times:
        parts += [html.heading("Wall time by stage (s)"), html.kv_table(times)]
    return parts


def _plan(plan: dict[str, Any]) -> list[str]:
    from segray.report import html

    p = plan.get("plan") or {}
    probe = p.get("probe") or {}
    facts = {
        "time budget (s)": plan.get("time_budget_s"),
        "search budget (s)": p.get("search_s"),
        "trials at once": p.get("concurrency"),
        "DDP workers a trial": p.get("workers"),
        "epochs a full trial": p.get("epochs"),
        "expected s an epoch": p.get("epoch_s"),
        "CV folds": p.get("folds"),
        "probe (ms a step)": round(1000 * probe["step_s"]) if probe.get("step_s") else None,
    }
    values = plan.get("values") or {}
    rows = [
        {"setting": k, "value": values.get(k, ""), "why": why}
        for k, why in (plan.get("reasons") or {}).items()
    ]
    parts = [html.kv_table(facts), html.heading("Why each setting")]
    parts.append(html.table(rows, ["setting", "value", "why"], sortable=False))
    parts += [html.note(n) for n in p.get("notes") or []]
    return parts
