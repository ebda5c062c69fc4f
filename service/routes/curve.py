"""/studies/{id}/curve: the mean score against the dropout rate, as JSON, SVG or PNG."""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from droptune.core.answer.curve import Curve, CurveFit, CurvePoint
from droptune.core.answer.plot import RateMark, Role, plot_data
from droptune.service.deps import CallerDep, ReaderDep
from droptune.service.routes.studies import ONE_STUDY, StudyId

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

router = APIRouter(prefix="/studies", tags=["studies"])

Format = Literal["json", "svg", "png"]
MEDIA = {"svg": "image/svg+xml", "png": "image/png"}
# An SVG opened as a page runs scripts with the API's origin (where the dashboard's cookie is).
# Matplotlib writes none and escapes the study's name, but the picture is also told to run
# none and fetch nothing, and browsers not to guess another type for either picture.
HEADERS = {
    "svg": {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        "X-Content-Type-Options": "nosniff",
    },
    "png": {"X-Content-Type-Options": "nosniff"},
}
TITLE_CHARS = 70  # a study name may be 200 characters: the title keeps to one line
# Matplotlib is not thread-safe even without pyplot (shared font and text caches), and FastAPI
# runs sync routes in a thread pool: one drawing at a time (each takes a fraction of a second).
_DRAWING = threading.Lock()

# Colours that stay apart for colour-blind readers (Okabe-Ito).
BLUE, VERMILLION, GREEN, GREY = "#0072B2", "#D55E00", "#009E73", "#999999"
MEAN_LABEL = "trials: mean ± 1 SE"
APART_LABEL = "told apart from the best"
PRUNED_LABEL = "pruned (fewer epochs)"
TIED_LABEL = "tied with the best (/best: tied)"
FIT_LABEL = "fitted curve ± 1 SE"
SLICE_LABEL = "fitted surface ± 1 SE (other layers at their fitted best)"


@router.get(
    "/{study_id}/curve",
    response_model=Curve,
    responses={
        200: {
            "description": "the curve: JSON (default), or a picture with `format=svg|png`",
            "content": {
                MEDIA["svg"]: {"schema": {"type": "string"}},
                MEDIA["png"]: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **ONE_STUDY,
    },
)
async def curve(
    request: Request,
    study_id: StudyId,
    caller: CallerDep,
    reader: ReaderDep,
    format: Annotated[Format, Query(description="json, svg or png")] = "json",
) -> Curve | Response:
    """Every COMPLETE trial's mean score ± 1 standard error against its rate, PRUNED trials
    apart (they trained fewer epochs), the best and recommended rates and the tied range."""
    limiter = _limiter(request)
    # One load of the trials and the fits (a GP: up to a few tenths of a second), in at most
    # CURVES threads: a caller asking for many curves waits here, not in the shared pool.
    data = await anyio.to_thread.run_sync(reader.curve, study_id, caller.scope, limiter=limiter)
    if format == "json":
        return data
    name = data.name or ""
    if len(name) > TITLE_CHARS:
        name = name[: TITLE_CHARS - 1] + "…"
    title = f"{name} (study {study_id})" if name else f"study {study_id}"
    body = await anyio.to_thread.run_sync(draw, data, title, format, limiter=limiter)
    return Response(body, media_type=MEDIA[format], headers=HEADERS[format])


CURVES = 2  # curves built at once in an API process


def _limiter(request: Request) -> anyio.CapacityLimiter:
    """The app's limiter for curves, made in its event loop when first used."""
    state = request.app.state
    if getattr(state, "curve_limiter", None) is None:
        state.curve_limiter = anyio.CapacityLimiter(CURVES)
    limiter: anyio.CapacityLimiter = state.curve_limiter
    return limiter


def draw(data: Curve, title: str, fmt: Literal["svg", "png"]) -> bytes:
    """The curve as an SVG or PNG picture (Agg, no display; imported here so the API starts
    without loading matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    better = "higher" if data.direction == "maximize" else "lower"
    ylabel = f"{data.metric} (mean over folds; {better} is better)"
    span = data.dropout_high - data.dropout_low
    xlim = (data.dropout_low - 0.03 * span, data.dropout_high + 0.03 * span)
    with _DRAWING:
        width = 8 if not data.layers else max(8, 4.5 * len(data.layers))
        fig = Figure(figsize=(width, 5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        if data.layers:  # a per-layer study: one panel per layer, each against its own rate
            ax = _layer_panels(fig, data, ylabel, xlim)
            fig.suptitle(title, parse_math=False)
        else:
            ax = fig.add_subplot()
            _plot(ax, data)
            # parse_math=False: a `$` in a study's name is text, not mathtext to parse.
            ax.set_title(title, parse_math=False)
            ax.set_xlabel("dropout rate")
            ax.set_ylabel(ylabel)
            ax.set_xlim(*xlim)
            ax.grid(alpha=0.3)
        if not data.points:
            ax.text(0.5, 0.5, "no finished trials yet", transform=ax.transAxes, ha="center")
        _legend(fig, ax)
        buf = io.BytesIO()
        # No date (the same curve gives the same bytes) and no URLs (the report inlines it).
        meta: dict[str, Any] = {}
        if fmt == "svg":
            meta = {"Date": None, "Type": None, "Format": None, "Creator": None}
        fig.savefig(buf, format=fmt, metadata=meta, dpi=144 if fmt == "png" else "figure")
        return buf.getvalue()


def _plot(ax: Axes, data: Curve) -> None:
    shown = plot_data(data)  # what the dashboard's plotly graph draws too
    if shown.band is not None:
        ax.axvspan(*shown.band, color=GREEN, alpha=0.12, lw=0, label=TIED_LABEL)
    labelled: set[bool] = set()
    for f in shown.finished:
        # Inside the shaded range a rate may still differ from the best: drawn hollow.
        label = "_" if f.apart in labelled else (APART_LABEL if f.apart else MEAN_LABEL)
        _errorbar(ax, f.point, label, hollow=f.apart)
        labelled.add(f.apart)
    if shown.fit is not None:
        _fitted(ax, shown.fit)
    if shown.pruned:
        xs, ys = [p.dropout for p in shown.pruned], [p.mean for p in shown.pruned]
        ax.scatter(xs, ys, marker="x", color=GREY, alpha=0.6, label=PRUNED_LABEL, gid="pruned")
    for m in shown.marks:
        _rate(ax, m)


def _layer_panels(fig: Figure, data: Curve, ylabel: str, xlim: tuple[float, float]) -> Axes:
    """One panel per dropout layer: every trial's score against that layer's own rate, and the
    best and recommended trials' rates for that layer (the tied band, a range of mean rates,
    is not drawn; tied trials are filled, those told apart hollow). The first panel's axes."""
    shown = plot_data(data)
    axes = fig.subplots(1, len(data.layers), sharey=True, squeeze=False)[0]
    for i, (ax, layer) in enumerate(zip(axes, data.layers, strict=True)):
        first = i == 0
        labelled: set[bool] = set()
        for f in shown.finished:
            p = f.point.model_copy(update={"dropout": f.point.params.get(layer, f.point.dropout)})
            apart = f.apart
            label = (
                "_" if not first or apart in labelled else (APART_LABEL if apart else MEAN_LABEL)
            )
            _errorbar(ax, p, label, hollow=apart)
            labelled.add(apart)
        if shown.pruned:
            xs = [p.params.get(layer, p.dropout) for p in shown.pruned]
            ax.scatter(
                xs,
                [p.mean for p in shown.pruned],
                marker="x",
                color=GREY,
                alpha=0.6,
                label=PRUNED_LABEL if first else "_",
                gid=f"pruned-{layer}",
            )
        _slice(ax, data, layer, first)
        said = []
        roles: tuple[tuple[Role, dict[str, float]], ...] = (
            ("best", data.best_params),
            ("recommended", data.recommended_params),
        )
        for role, params in roles:
            rate = params.get(layer)
            if rate is None:
                continue
            said.append(f"{role} {rate:.2f}")
            _rate(ax, RateMark(rate, role, f"{rate:.2f}"), label=role if first else "_")
        ax.set_title(f"layer {i + 1} ({layer}): {', '.join(said)}", fontsize="small")
        ax.set_xlabel(f"layer {i + 1}'s dropout rate")
        ax.set_xlim(*xlim)
        ax.grid(alpha=0.3)
    first_ax: Axes = axes[0]
    first_ax.set_ylabel(ylabel)
    return first_ax


def _slice(ax: Axes, data: Curve, layer: str, first: bool) -> None:
    """A per-layer study's fitted surface along this layer, the other layers at their fitted
    best (core/answer/surface.py): a line inside a ±1 SE band, as the curve's fit is drawn."""
    cut = next((c for c in data.surface.slices if c.layer == layer), None) if data.surface else None
    if cut is None:
        return
    lo = [m - s for m, s in zip(cut.mean, cut.sd, strict=True)]
    hi = [m + s for m, s in zip(cut.mean, cut.sd, strict=True)]
    ax.fill_between(cut.rates, lo, hi, color=BLUE, alpha=0.10, lw=0, zorder=2, gid=f"fit-{layer}")
    label = SLICE_LABEL if first else "_"
    ax.plot(cut.rates, cut.mean, color=BLUE, lw=1.2, alpha=0.8, zorder=2, label=label)


def _fitted(ax: Axes, fit: CurveFit) -> None:
    """The fitted curve (core/answer/fit.py): a line inside a ±1 SE band, behind the points."""
    lo = [m - s for m, s in zip(fit.mean, fit.sd, strict=True)]
    hi = [m + s for m, s in zip(fit.mean, fit.sd, strict=True)]
    ax.fill_between(fit.rates, lo, hi, color=BLUE, alpha=0.10, lw=0, zorder=2, gid="fit-band")
    ax.plot(fit.rates, fit.mean, color=BLUE, lw=1.2, alpha=0.8, zorder=2, label=FIT_LABEL)


def _rate(ax: Axes, m: RateMark, label: str | None = None) -> None:
    """The best or recommended rate as a vertical line behind the points."""
    label = f"{m.role} ({m.text})" if label is None else label
    if m.role == "best":
        ax.axvline(m.rate, color="black", lw=1.2, ls="--", zorder=1, label=label)
    else:
        ax.axvline(m.rate, color=VERMILLION, lw=1.8, zorder=1, label=label)


def _legend(fig: Figure, ax: Axes) -> None:
    """Below the axes, so it never hides a point. Filled column by column: the trials, then
    the answer's rates, then the tied range (matplotlib would list error bars last)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    first: tuple[str, ...] = (MEAN_LABEL, APART_LABEL, PRUNED_LABEL, FIT_LABEL, SLICE_LABEL)
    first += ("best", "recommended", TIED_LABEL)
    rank = {label: next(r for r, f in enumerate(first) if label.startswith(f)) for label in labels}
    order = sorted(range(len(labels)), key=lambda i: rank[labels[i]])
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside lower center",
        ncols=3,
        fontsize="small",
        frameon=False,
    )


def _errorbar(ax: Axes, p: CurvePoint, label: str, *, hollow: bool = False) -> None:
    """One COMPLETE trial, with its artists named after it (`errorbar-<trial>`) in the SVG."""
    container = ax.errorbar(
        [p.dropout],
        [p.mean],
        yerr=[p.se],
        fmt="o",
        color=BLUE,
        markerfacecolor="white" if hollow else BLUE,
        ms=5,
        capsize=3,
        zorder=3,
        label=label,
    )
    line, caps, bars = container.lines
    line.set_gid(f"point-{p.trial}")
    for i, cap in enumerate(caps):
        cap.set_gid(f"cap-{p.trial}-{i}")
    for bar in bars:
        bar.set_gid(f"errorbar-{p.trial}")
