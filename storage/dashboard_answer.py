"""The answer in the Optuna dashboard: a note, a graph of the curve and a few study attributes.

Users look at the dashboard, which knows nothing of droptune's answer; this writes it into the
Optuna study where optuna-dashboard shows it. Workers publish after every batch, so several may
publish the same study at once: a publish never replaces an answer drawn from more trials than
its own (the rank below), and on PostgreSQL publishes of a study take turns (an advisory lock),
because the note and the graph are each stored in several attributes and two interleaved
writers would leave a mix of both.
"""

from __future__ import annotations

import logging
import re
from html import escape
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna_dashboard import save_note, save_plotly_graph_object
from sqlalchemy.engine import Engine

from droptune.core.answer.curve import Curve, CurveFit, CurvePoint
from droptune.core.answer.plot import RateMark, plot_data
from droptune.core.answer.rates import layer_rates
from droptune.core.answer.view import DASH, TestView, answer_view, num
from droptune.core.schemas import BestOut
from droptune.storage.optuna_bridge import study_lock
from droptune.storage.readmodel.reads import Reader
from droptune.storage.sql.db import is_outage

log = logging.getLogger(__name__)

GRAPH_ID = "droptune-curve"  # a fixed id: saving again replaces the graph, never adds one
GRAPH_PREFIX = f"dashboard:plot_data:{GRAPH_ID}:"  # where optuna-dashboard stores it
NOTE_PREFIX = "dashboard:note_str:"  # the study's note (a trial's has the trial id in it)
RANK_KEY = "droptune:answer_rank"  # system attribute: [points, has test score] last published
MARKED_KEY = "droptune:marked_trials"  # system attribute: trial ids whose note droptune wrote
DASHBOARD_GUIDE = (
    "_Reading this dashboard: the large **Best Trial** figure is the best-scoring trial, not "
    "the recommendation above (its trial's note says so); a study searching one rate gives the "
    "importance, contour and rank panels nothing to compare (a per-layer study's importance "
    "panel does rank its layers); trials stopped by a worker's shutdown or "
    "a cancel show as Fail (droptune counts them as interrupted, and their rates ran again)._"
)
AXIS = {"gridcolor": "#e5ecf6", "zeroline": False, "automargin": True}
# Every ASCII punctuation mark, which markdown may read as syntax (links, images, emphasis, code,
# headings, tables); and the characters that end a line or could start a new block.
MD_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
MD_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
HTML_IN_MD = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
PRUNED_NOTE = (
    "_Pruned trials trained fewer epochs, so their low points in the slice plot are not "
    "comparable with finished trials; the curve graph draws them faint, without error bars._"
)


def publish_study(engine: Engine, storage: RDBStorage, study_id: int) -> None:
    """Read the study's answer so far and publish it (a worker calls this after every batch and
    after the refit). Never raises: the dashboard's copy is not the answer."""
    try:
        name, curve, best = Reader(engine, storage).for_dashboard(study_id)
    except Exception as exc:
        log.warning("study %s: could not read its answer for the dashboard: %s", study_id, exc)
        return
    publish_answer(storage, name, curve, best)


def publish_answer(storage: RDBStorage, optuna_study: str, curve: Curve, best: BestOut) -> None:
    """Write the answer into the Optuna study, replacing what an earlier publish wrote.

    Never raises: a study's training must not fail because the dashboard's copy of its answer
    could not be written (the next publish writes it again)."""
    try:
        _publish(storage, optuna_study, curve, best)
    except Exception as exc:
        # An outage is one line (the next publish retries); anything else shows where it broke.
        log.warning(
            "could not publish the answer to Optuna study %s: %s",
            optuna_study,
            exc,
            exc_info=not is_outage(exc),
        )


def _publish(storage: RDBStorage, name: str, curve: Curve, best: BestOut) -> None:
    rank = [len(curve.points), int(best.test is not None)]
    note = note_markdown(curve, best)
    figure = curve_figure(curve)
    graph = figure.to_json()
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    # The worker's publishes are one at a time: one lock connection, one for the writes.
    with study_lock(storage.engine, study._study_id):
        try:
            system = storage.get_study_system_attrs(study._study_id)
        except KeyError:  # deleted since it was loaded: nothing to publish to (see study_lock)
            log.debug("Optuna study %s was deleted before its answer was published", name)
            return
        stored_rank = list(system.get(RANK_KEY, [0, 0]))
        if stored_rank > rank:
            return  # a publish that saw more trials got here first
        if stored_rank != rank:
            storage.set_study_system_attr(study._study_id, RANK_KEY, rank)
        # Unchanged parts are not written again (after the last batch, say).
        if _stored(system, NOTE_PREFIX) != note:
            save_note(study, note)
        if _stored(system, GRAPH_PREFIX) != graph:
            save_plotly_graph_object(study, figure, graph_object_id=GRAPH_ID)
        stored = study.user_attrs
        for key, value in answer_attrs(curve, best).items():
            if stored.get(key) != value:
                study.set_user_attr(key, value)
        _mark_trials(storage, study, system, best)


def trial_marks(best: BestOut) -> dict[int, str]:
    """The notes droptune writes on trials, by trial number: the recommended one and, when it
    differs, the best-scoring one, so the dashboard's trial list and its Best Trial card say
    which is which."""
    marks: dict[int, str] = {}
    rec = best.recommended
    if rec is not None:
        marks[rec.trial] = (
            f"**droptune: the recommended rate** ({md_text(rec.rule)}): {md_text(rec.why)}"
        )
    if best.trial is not None and (rec is None or best.trial != rec.trial):
        after = f"; the recommended one is trial {rec.trial}" if rec is not None else ""
        marks[best.trial] = f"**droptune: the best-scoring rate**{after}."
    return marks


def _mark_trials(
    storage: RDBStorage, study: optuna.Study, system: dict[str, Any], best: BestOut
) -> None:
    """Write the trial notes of `trial_marks`, and empty those droptune wrote before on trials
    no longer marked (the recommendation moved)."""
    sid = study._study_id
    marks = {
        storage.get_trial_id_from_study_id_trial_number(sid, number): text
        for number, text in trial_marks(best).items()
    }
    before = [int(t) for t in system.get(MARKED_KEY, [])]
    for trial_id in [*before, *marks]:
        text = marks.get(trial_id, "")
        if _stored(system, f"dashboard:{trial_id}:note_str:") != text:
            save_note(optuna.Trial(study, trial_id), text)
    if sorted(marks) != sorted(before):
        storage.set_study_system_attr(sid, MARKED_KEY, sorted(marks))


def _stored(system: dict[str, Any], prefix: str) -> str:
    """The note or the graph as stored: optuna-dashboard splits each into numbered attributes.
    (Were that layout to change, this reads "" and the publish just writes again.)"""
    parts = {k: v for k, v in system.items() if k.startswith(prefix)}
    return "".join(str(parts.get(f"{prefix}{i}", "")) for i in range(len(parts)))


def answer_attrs(curve: Curve, best: BestOut) -> dict[str, float | str]:
    """The answer in a few words, beside the spec's in the study page's attribute table."""
    attrs: dict[str, float | str] = {}
    if best.recommended is not None:
        attrs["recommended_dropout"] = round(best.recommended.dropout, 4)
        layers = layer_rates(best.recommended.params)
        if len(layers) > 1:  # recommended_dropout is their mean, no layer's rate
            attrs["recommended_by_layer"] = ", ".join(f"{v:.4f}" for v in layers)
    if curve.tied_low is not None and curve.tied_high is not None:
        attrs["tied_range"] = f"{curve.tied_low:.2f}{DASH}{curve.tied_high:.2f}"
    if best.test is not None:
        attrs["test_score"] = round(best.test.score, 6)
    return attrs


def md_text(text: str) -> str:
    """`text` as literal markdown text, whatever it holds: the note is rendered as markdown
    (with raw HTML too, were the dashboard started with allow_unsafe), and a warning or a
    reason can quote a name a user chose. Punctuation is backslash-escaped, so no link, image
    or emphasis; < > & are character references, so no HTML; line breaks become spaces, so no
    new block. Rendered, it reads as written."""
    text = MD_BREAKS.sub(" ", text)
    return MD_PUNCTUATION.sub(lambda m: HTML_IN_MD.get(m[0], "\\" + m[0]), text)


def note_markdown(curve: Curve, best: BestOut) -> str:
    """The study's note: the answer as a person reads it, in a few lines of markdown (the
    strings it did not write itself escaped)."""
    v = answer_view(best, curve.points)
    lines = [f"## droptune answer: {md_text(v.metric)} ({md_text(v.direction)})", ""]
    if (r := v.recommended) is not None:
        lines += [
            f"**Recommended dropout: {r.rate_short}** ({r.rule_label}, "
            f"trial {r.trial}): {md_text(r.why)}",
            "",
        ]
    if (h := v.headline) is not None:
        lines.append(
            f"- **Best mean score**: dropout {h.rate_short}, {md_text(v.metric)} "
            f"{h.mean_short} ± {h.se_short} (± 1 SE over {h.splits} splits; "
            f"trial {h.trial})"
        )
    else:
        lines.append("- No trial has finished yet.")
    if v.tied is not None:
        lines.append(f"- **Tied:** {v.tied}")
    lines += _test_lines(v.test)
    lines += [f"- ⚠️ {md_text(w)}" for w in v.warnings]
    if v.engine is not None:
        lines.append(f"- Engine: {md_text(v.engine)}")
    lines += [
        f"- Status: {v.status}; {v.finished} finished and {v.pruned} pruned trials on the curve.",
        "",
        PRUNED_NOTE,
        "",
        DASHBOARD_GUIDE,
    ]
    return "\n".join(lines) + "\n"


def _test_lines(x: TestView | None) -> list[str]:
    if x is None:
        return []
    lines = [
        f"- **Test score** at dropout {x.main.rate}: {md_text(x.metric)} {x.main.with_ci}, "
        f"scored once on {x.n} {x.rows}"
    ]
    if x.best is not None:
        lines.append(f"  - the best rate {x.best.rate}: {x.best.with_ci}")
    if x.baseline is not None:
        lines.append(f"  - without dropout (baseline): {x.baseline.with_ci}")
    return lines


def curve_figure(curve: Curve) -> Any:
    """The curve as a plotly figure: finished trials with ±1 SE, pruned ones faint, the tied
    range shaded and the best and recommended rates marked (core/answer/plot.py's data)."""
    import plotly.graph_objects as go  # type: ignore[import-untyped]  # lazily: slow import

    data = plot_data(curve)
    done = [f.point for f in data.finished]
    pruned = list(data.pruned)
    shown = list(data.span) if data.span is not None else None
    fig = go.Figure()
    if data.band is not None:
        _shade_tied(fig, data.band)
    if data.fit is not None:
        _fitted(fig, data.fit)
    if pruned:
        fig.add_trace(
            go.Scatter(
                x=[p.dropout for p in pruned],
                y=[p.mean for p in pruned],
                mode="markers",
                name=_pruned_label(pruned, shown),
                marker={"color": "rgba(127,127,127,0.35)", "size": 7},
                text=[_hover(p) for p in pruned],
                hoverinfo="text",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[p.dropout for p in done],
            y=[p.mean for p in done],
            error_y={"type": "data", "array": [p.se for p in done], "visible": True},
            mode="markers",
            name="finished (±1 SE)",
            marker={"color": "#1f77b4", "size": 8},
            text=[_hover(p) for p in done],
            hoverinfo="text",
        )
    )
    _mark_rates(fig, data.marks)
    # plotly.js reads a few HTML tags and character references in its texts: the metric is
    # escaped (it is a name from a fixed list today, but the figure does not rely on that).
    metric = escape(curve.metric)
    title = f"{metric} by dropout rate (mean over folds, ±1 SE)"
    fig.update_layout(
        # Left and low enough to stay clear of the dashboard's toolbar at the top right.
        title={"text": title, "x": 0.01, "xanchor": "left", "y": 0.93, "font": {"size": 15}},
        xaxis={**AXIS, "title": _x_title(curve), "range": [curve.dropout_low, curve.dropout_high]},
        yaxis={**AXIS, "title": f"{metric} ({escape(curve.direction)})", "range": shown},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 60, "r": 20, "t": 70, "b": 40},
        # plotly.js's own defaults plus light grid lines: a named template would store ~6 KB
        # more in the study with every publish.
        template="none",
    )
    return fig


def _x_title(curve: Curve) -> str:
    if not curve.layers:
        return "dropout"
    return (
        f"mean of the {len(curve.layers)} layers' rates (each layer's: the note, and the API's "
        "/curve?format=svg, one panel per layer)"
    )


def _fitted(fig: Any, fit: CurveFit) -> None:
    """The fitted curve as a line inside a ±1 SE band (core/answer/fit.py)."""
    import plotly.graph_objects as go

    hi = [m + s for m, s in zip(fit.mean, fit.sd, strict=True)]
    lo = [m - s for m, s in zip(fit.mean, fit.sd, strict=True)]
    band = {"color": "rgba(31,119,180,0)"}
    fig.add_trace(go.Scatter(x=fit.rates, y=hi, mode="lines", line=band, showlegend=False))
    fig.add_trace(
        go.Scatter(
            x=fit.rates,
            y=lo,
            mode="lines",
            line=band,
            fill="tonexty",
            fillcolor="rgba(31,119,180,0.12)",
            name="fitted curve ± 1 SE",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=fit.rates,
            y=fit.mean,
            mode="lines",
            line={"color": "rgba(31,119,180,0.8)", "width": 1.5},
            showlegend=False,
            hoverinfo="skip",
        )
    )


def _pruned_label(pruned: list[CurvePoint], shown: list[float] | None) -> str:
    off = sum(not shown[0] <= p.mean <= shown[1] for p in pruned) if shown else 0
    return (
        f"pruned: fewer epochs ({off} of {len(pruned)} off the scale)"
        if off
        else "pruned: fewer epochs"
    )


def _shade_tied(fig: Any, band: tuple[float, float]) -> None:
    fig.add_vrect(
        x0=band[0],
        x1=band[1],
        fillcolor="#2ca02c",
        opacity=0.12,
        line_width=0,
        annotation_text="tied with the best",
        annotation_position="top left",
    )


def _mark_rates(fig: Any, marks: tuple[RateMark, ...]) -> None:
    for m in marks:
        if m.role == "recommended":
            line, where = {"color": "#ff7f0e"}, "top right"
        else:
            line, where = {"color": "#d62728", "dash": "dash"}, "bottom right"
        fig.add_vline(
            x=m.rate, line=line, annotation_text=f"{m.role} {m.text}", annotation_position=where
        )


def _hover(p: CurvePoint) -> str:
    text = f"trial {p.trial}<br>dropout {p.dropout:.3f}<br>{num(p.mean)} ± {p.se:.2g}"
    if p.epochs is not None:
        text += f"<br>{p.epochs} epochs"
    if p.p_vs_best is not None:
        text += f"<br>p vs best {p.p_vs_best:.3g}"
    return text
