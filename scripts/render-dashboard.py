#!/usr/bin/env python3
"""Render a Grafana dashboard to a PNG from its own JSON and its own PromQL queries.

Where Grafana itself is not at hand, this draws what its dashboard shows: every panel of
the dashboard JSON at its `gridPos` (24 columns; rows as headers), each panel's queries
(`targets[].expr`) run against a real Prometheus over one time range, time series with
their `legendFormat` and the legend's calculations, stat panels as one big number coloured
by their thresholds, and the values formatted with the panel's unit.

Grafana's variables are substituted as Grafana would for the selection "All":
`$__rate_interval`, `$__interval`, `$__range` from the time range, step and scrape
interval; a query variable (`$saga`, `$instance`) by its `allValue` (or its values from
Prometheus when it has none), and `--var NAME=VALUE` to choose one; `${datasource}` only
ever names the data source, which is the Prometheus given here.

Targets marked `"instant": true` are run with /api/v1/query at the end of the range; the
others with /api/v1/query_range, and a stat panel reduces them with its `reduceOptions`
(`lastNotNull`), as Grafana does. Every query that returns no data (or only NaN) is listed
on stderr at the end.

    target/dash-venv/bin/python scripts/render-dashboard.py \\
        --prometheus http://127.0.0.1:9099 --from 1700000000 --to 1700000300 \\
        --scrape-interval 5s --out docs/dashboard.png

Exit status: 0 when the PNG was written (even with queries that returned no data), 1 when
Prometheus cannot be reached or the dashboard cannot be read, 2 on bad arguments.
"""

import argparse
import datetime as dt
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

PROG = "render-dashboard"

# Grafana's dark theme.
BG = "#111217"
PANEL_BG = "#181b1f"
PANEL_BORDER = "#2c3235"
TEXT = "#ccccdc"
TEXT_DIM = "#8e8e9e"
GRID = "#2c3235"
# Grafana's classic palette, in its order.
PALETTE = [
    "#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
    "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17", "#890F02", "#0A437C",
]
# Grafana's named colours (dark theme), as used in thresholds.
NAMED_COLORS = {
    "green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A",
    "blue": "#5794F2", "purple": "#B877D9", "dark-green": "#37872D", "dark-red": "#C4162A",
    "dark-orange": "#FA6400", "dark-yellow": "#E0B400", "dark-blue": "#1F60C4",
    "dark-purple": "#8F3BB8", "semi-dark-green": "#56A64B", "semi-dark-red": "#E02F44",
    "semi-dark-orange": "#FF780A", "semi-dark-blue": "#3274D9", "text": TEXT,
    "transparent": "#00000000",
}

# Layout, in pixels at DPI: Grafana's grid is 24 columns; a grid unit is 30 px high plus
# an 8 px gap.
DPI = 100
GRID_H = 38
GAP = 8


class Fatal(Exception):
    """An expected failure: printed as one line, exit status 1."""


def warn(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- time and durations


def parse_duration(text):
    """'5s', '1m', '1h30m', '250ms' or a plain number of seconds -> seconds (float)."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total, pos = 0.0, 0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (e.g. 5s, 1m, 2h)")
    return total


def prom_duration(seconds):
    """Seconds -> a PromQL duration, in whole seconds (at least 1s)."""
    return f"{max(1, int(round(seconds)))}s"


def parse_time(text, now):
    """Unix seconds, RFC 3339, 'now' or 'now-15m' (Grafana's relative form) -> unix seconds."""
    text = text.strip()
    if text == "now":
        return now
    m = re.fullmatch(r"now-(.+)", text)
    if m:
        return now - parse_duration(m.group(1))
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (unix seconds, RFC 3339, now, now-1h)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


# ---------------------------------------------------------------- Prometheus


class Prometheus:
    def __init__(self, url, timeout):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path, params):
        url = f"{self.url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            # Prometheus answers a bad query with 400/422 and a JSON error.
            try:
                body = json.load(e)
            except ValueError:
                raise QueryError(f"HTTP {e.code} from {path}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Fatal(f"cannot reach Prometheus at {self.url}: {reason}") from None
        except ValueError:
            raise QueryError(f"answer of {path} is not JSON") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def check(self):
        """Fails with a clear message when nothing answers as Prometheus at the URL."""
        try:
            self.get("/api/v1/query", {"query": "1"})
        except QueryError as e:
            raise Fatal(f"{self.url} does not answer like Prometheus: {e}") from None

    def query_range(self, expr, start, end, step):
        data = self.get("/api/v1/query_range",
                        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                         "step": f"{step:g}"})
        return [(s.get("metric", {}), [(float(t), to_float(v)) for t, v in s.get("values", [])])
                for s in data.get("result", [])]

    def query(self, expr, at):
        data = self.get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        kind, result = data.get("resultType"), data.get("result", [])
        if kind == "scalar":
            return [({}, [(float(result[0]), to_float(result[1]))])]
        return [(s.get("metric", {}), [(float(s["value"][0]), to_float(s["value"][1]))])
                for s in result]

    def label_values(self, label, match):
        params = {"match[]": match} if match else {}
        return self.get(f"/api/v1/label/{urllib.parse.quote(label)}/values", params)


class QueryError(Exception):
    pass


def to_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------- variables

VAR_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::\w+)?\]\]|\$\{(\w+)(?:\.[^:^}]+)?(?::[^}]+)?\}")


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def resolve_variables(dashboard, prom, overrides):
    """Dashboard variable -> the text put in queries, as Grafana formats it for Prometheus."""
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name, kind = var.get("name"), var.get("type")
        if name in overrides:
            values[name] = overrides[name]
            continue
        if kind == "datasource":
            values[name] = var.get("query", "prometheus")
            continue
        current = var.get("current", {}).get("value")
        if isinstance(current, str):
            current = [current]
        if not current or "$__all" in current:
            if var.get("allValue"):
                values[name] = var["allValue"]
                continue
            current = all_values(var, prom)
        if kind in ("constant", "textbox", "custom") and len(current) == 1:
            values[name] = current[0]
        elif len(current) == 1:
            values[name] = re.escape(current[0])
        else:
            # Grafana formats several values for Prometheus as a regex alternation.
            values[name] = "(" + "|".join(re.escape(v) for v in current) + ")"
    unknown = set(overrides) - set(values)
    for name in sorted(unknown):
        warn(f"--var {name}: the dashboard has no such variable; used anyway")
        values[name] = overrides[name]
    return values


def all_values(var, prom):
    """The values of a `label_values(metric, label)` query variable, from Prometheus."""
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", query or "")
    if not m:
        warn(f"variable {var.get('name')}: cannot evaluate {query!r} without Grafana; using .*")
        return [".*"]
    try:
        found = prom.label_values(m.group(2), m.group(1))
    except QueryError as e:
        warn(f"variable {var.get('name')}: {query!r} failed ({e}); using .*")
        return [".*"]
    return found or [".*"]


def check_regex_use(dashboard, variables):
    """Warns about a multi-value variable used outside a `=~` matcher (Grafana would put a
    regex alternation there, which only a regex matcher understands)."""
    multi = {v["name"] for v in dashboard.get("templating", {}).get("list", [])
             if v.get("type") == "query" and (v.get("multi") or v.get("includeAll"))}
    problems = []
    for p in walk_panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            for m in VAR_RE.finditer(expr):
                name = m.group(1) or m.group(2) or m.group(3)
                if name in multi and not re.search(r'=~\s*"[^"]*$', expr[:m.start()]):
                    problems.append(f"panel {p.get('id')} ({p.get('title')!r}) {t.get('refId')}: "
                                    f"${name} outside a =~ matcher")
    for line in problems:
        warn(line)
    if multi and not problems:
        print(f"{PROG}: multi-value variables ({', '.join(sorted(multi))}) are used only in =~ matchers")
    return problems


def substitute(expr, values):
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        unknown.append(name)
        return m.group(0)

    return VAR_RE.sub(repl, expr), unknown


# ---------------------------------------------------------------- units and values


def fmt_number(v):
    """A value with about three significant digits, as Grafana's auto decimals."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3g}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def fmt_short(v):
    a = abs(v)
    for limit, suffix in ((1e12, " Tri"), (1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if a >= limit:
            return fmt_number(v / limit) + suffix
    return fmt_number(v)


def fmt_seconds(v):
    a = abs(v)
    if a == 0:
        return "0 s"
    if a < 1e-6:
        return f"{fmt_number(v * 1e9)} ns"
    if a < 1e-3:
        return f"{fmt_number(v * 1e6)} µs"
    if a < 1:
        return f"{fmt_number(v * 1e3)} ms"
    if a < 60:
        return f"{fmt_number(v)} s"
    if a < 3600:
        return f"{fmt_number(v / 60)} min"
    return f"{fmt_number(v / 3600)} hour"


def fmt_value(v, unit):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if unit == "s":
        return fmt_seconds(v)
    if unit == "ms":
        return fmt_seconds(v / 1000)
    if unit == "reqps":
        return f"{fmt_short(v)} req/s"
    if unit == "ops":
        return f"{fmt_short(v)} ops/s"
    if unit == "percent":
        return f"{fmt_number(v)}%"
    if unit == "percentunit":
        return f"{fmt_number(v * 100)}%"
    if unit == "bytes":
        for limit, suffix in ((2**40, " TiB"), (2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")):
            if abs(v) >= limit:
                return fmt_number(v / limit) + suffix
        return f"{fmt_number(v)} B"
    return fmt_short(v)


def finite(points):
    return [v for _, v in points if not math.isnan(v) and not math.isinf(v)]


def reduce(points, calc):
    vals = finite(points)
    if not vals:
        return None
    if calc in ("lastNotNull", "last"):
        return vals[-1]
    if calc == "max":
        return max(vals)
    if calc == "min":
        return min(vals)
    if calc in ("mean", "avg"):
        return sum(vals) / len(vals)
    if calc == "sum":
        return sum(vals)
    if calc in ("firstNotNull", "first"):
        return vals[0]
    return vals[-1]


CALC_HEADERS = {"lastNotNull": "Last *", "last": "Last", "max": "Max", "min": "Min",
                "mean": "Mean", "sum": "Total", "firstNotNull": "First *", "first": "First"}


def legend_name(fmt, labels, expr):
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(.+?)\s*\}\}", lambda m: str(labels.get(m.group(1), "")), fmt).strip()
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if not shown:
        return labels.get("__name__", expr)
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items()))
    return f"{labels.get('__name__', '')}{{{inner}}}"


def threshold_color(steps, value):
    color = "green"
    for s in steps or []:
        if s.get("value") is None or (value is not None and value >= s["value"]):
            color = s.get("color", color)
    return NAMED_COLORS.get(color, color)


# ---------------------------------------------------------------- querying panels


class Run:
    """Queries every panel once and remembers which queries had no data."""

    def __init__(self, prom, start, end, step, values):
        self.prom, self.start, self.end, self.step, self.values = prom, start, end, step, values
        self.no_data = []   # ("panel ID 'title' refId", expr, why)
        self.notes = []
        self.queries = 0

    def series(self, panel, target):
        """[(name, [(t, v)])] of one target, or [] (and a note) when it has no data."""
        raw = target.get("expr", "")
        expr, unknown = substitute(raw, self.values)
        where = (f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId', '?')}", expr)
        if target.get("hide"):
            return []
        # Grafana leaves what is not a variable as it is ($1 in label_replace, say).
        names = sorted({u for u in unknown if not u.isdigit()})
        if names:
            self.notes.append(f"{where[0]}: not a variable of the dashboard, left as is: "
                              + ", ".join("$" + n for n in names))
        self.queries += 1
        try:
            if target.get("instant") and not target.get("range"):
                result = self.prom.query(expr, self.end)
            else:
                result = self.prom.query_range(expr, self.start, self.end, self.step)
        except QueryError as e:
            self.no_data.append((*where, f"query failed: {e}"))
            return []
        if not result:
            self.no_data.append((*where, "no series"))
            return []
        if not any(finite(points) for _, points in result):
            self.no_data.append((*where, "only NaN values"))
        fmt = target.get("legendFormat", "")
        return [(legend_name(fmt, labels, expr), points) for labels, points in result]


# ---------------------------------------------------------------- drawing


def px(fig_w, fig_h, x, y, w, h):
    """Pixel box (top-left origin) -> matplotlib figure fraction [left, bottom, w, h]."""
    return [x / fig_w, 1 - (y + h) / fig_h, w / fig_w, h / fig_h]


def panel_frame(fig, box, title, face=PANEL_BG):
    from matplotlib.patches import FancyBboxPatch
    fw, fh = fig.get_size_inches() * DPI
    x, y, w, h = box
    l, b, ww, hh = px(fw, fh, x, y, w, h)
    fig.patches.append(FancyBboxPatch((l, b), ww, hh, transform=fig.transFigure,
                                      boxstyle="round,pad=0,rounding_size=0.002",
                                      facecolor=face, edgecolor=PANEL_BORDER, linewidth=1,
                                      zorder=-10))
    fig.text(l + 8 / fw, 1 - (y + 7) / fh, title, color="white" if face != PANEL_BG else TEXT,
             fontsize=10.5, fontweight="bold", va="top", ha="left")


def no_data_text(fig, box):
    fw, fh = fig.get_size_inches() * DPI
    x, y, w, h = box
    fig.text((x + w / 2) / fw, 1 - (y + h / 2 + 10) / fh, "No data", color=TEXT_DIM,
             fontsize=13, ha="center", va="center")


def draw_stat(fig, run, panel, box):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    opts = panel.get("options", {})
    calc = (opts.get("reduceOptions", {}).get("calcs") or ["lastNotNull"])[0]
    series = []
    for t in panel.get("targets", []):
        series.extend(run.series(panel, t))
    values = [(name, pts, reduce(pts, calc)) for name, pts in series]
    shown = [v for v in values if v[2] is not None]
    steps = defaults.get("thresholds", {}).get("steps")
    background = opts.get("colorMode", "value") == "background"
    first = shown[0][2] if shown else None
    color = threshold_color(steps, first) if shown else PANEL_BG
    face = color if background and shown else PANEL_BG
    panel_frame(fig, box, panel.get("title", ""), face=face)
    fw, fh = fig.get_size_inches() * DPI
    x, y, w, h = box
    if not shown:
        no_data_text(fig, box)
        return
    if opts.get("graphMode", "none") == "area" and len(shown) == 1 and len(finite(shown[0][1])) > 1:
        ax = fig.add_axes(px(fw, fh, x + 1, y + h * 0.55, w - 2, h * 0.45 - 1))
        ts = [t for t, _ in shown[0][1]]
        vs = [v if not math.isnan(v) else None for _, v in shown[0][1]]
        spark = "white" if background else color
        ax.plot(ts, [math.nan if v is None else v for v in vs], color=spark, alpha=0.55, lw=1)
        ax.fill_between(ts, [0 if v is None else v for v in vs], color=spark, alpha=0.18, lw=0)
        ax.set_xlim(run.start, run.end)
        lo = min(0, min(finite(shown[0][1])))
        hi = max(finite(shown[0][1]))
        ax.set_ylim(lo, hi * 1.05 if hi > lo else lo + 1)
        ax.axis("off")
    text_color = "white" if background else color
    if len(shown) == 1:
        fig.text((x + w / 2) / fw, 1 - (y + h * 0.52) / fh, fmt_value(first, unit),
                 color=text_color, fontsize=26, fontweight="bold", ha="center", va="center")
    else:
        for i, (name, _, v) in enumerate(shown[:4]):
            cx = x + w * (i + 0.5) / min(4, len(shown))
            fig.text(cx / fw, 1 - (y + h * 0.42) / fh, name, color=text_color, fontsize=9,
                     ha="center", va="center")
            fig.text(cx / fw, 1 - (y + h * 0.62) / fh, fmt_value(v, unit), color=text_color,
                     fontsize=18, fontweight="bold", ha="center", va="center")


def draw_timeseries(fig, run, panel, box, color_start):
    import matplotlib.dates as mdates
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit = defaults.get("unit", "short")
    legend = panel.get("options", {}).get("legend", {})
    calcs = legend.get("calcs", []) if legend.get("displayMode") == "table" else []
    stacked = custom.get("stacking", {}).get("mode", "none") == "normal"
    fill = custom.get("fillOpacity", 0) / 100
    lw = custom.get("lineWidth", 1) * 1.2

    series = []
    for t in panel.get("targets", []):
        series.extend(run.series(panel, t))
    panel_frame(fig, box, panel.get("title", ""))
    if not series:
        no_data_text(fig, box)
        return
    fw, fh = fig.get_size_inches() * DPI
    x, y, w, h = box
    top, left, right, bottom = 30, 62, 30, 22
    row_h = 16
    # As many legend rows as leave the plot 120 px (Grafana scrolls the rest).
    fit = int((h - top - bottom - 120 - 6) / row_h) - (1 if calcs else 0)
    rows = min(len(series), max(fit, 1)) if legend.get("showLegend", True) else 0
    header_row = 1 if rows and (calcs or len(series) > rows) else 0
    legend_h = (rows + header_row) * row_h + (6 if rows else 0)
    plot_h = h - top - bottom - legend_h
    ax = fig.add_axes(px(fw, fh, x + left, y + top, w - left - right, plot_h))
    ax.set_facecolor(PANEL_BG)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.grid(True, color=GRID, lw=0.8)
    ax.tick_params(colors=TEXT_DIM, labelsize=8.5, length=0)

    def to_dates(ts):
        return [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in ts]

    colors = [PALETTE[(color_start + i) % len(PALETTE)] for i in range(len(series))]
    base = {}
    for (name, points), color in zip(series, colors):
        ts = [t for t, _ in points]
        vs = [v for _, v in points]
        if stacked:
            below = [base.get(t, 0.0) for t in ts]
            vs = [b + (0.0 if math.isnan(v) else v) for b, v in zip(below, vs)]
            for t, v in zip(ts, vs):
                base[t] = v
            ax.fill_between(to_dates(ts), below, vs, color=color, alpha=max(fill, 0.1), lw=0)
        elif fill:
            ax.fill_between(to_dates(ts), 0, [0 if math.isnan(v) else v for v in vs],
                            color=color, alpha=fill, lw=0)
        ax.plot(to_dates(ts), vs, color=color, lw=lw)
    ax.set_xlim(to_dates([run.start])[0], to_dates([run.end])[0])
    lo, hi = ax.get_ylim()
    if defaults.get("min") is not None:
        lo = defaults["min"]
    drawn = [v for _, points in series for v in finite(points)]
    if drawn and max(drawn) == min(drawn) == 0:
        hi = 1  # all zero: Grafana shows 0 to 1
    if hi <= lo:
        hi = lo + 1
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=3))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(v, unit)))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=dt.timezone.utc, minticks=3,
                                                      maxticks=max(4, int(w / 100))))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=dt.timezone.utc))

    if not rows:
        return
    # The legend as Grafana's table: name, then one column per calculation.
    ly = y + h - legend_h - 2
    widest = max([len(CALC_HEADERS.get(c, c)) for c in calcs] +
                 [len(fmt_value(reduce(points, c), unit)) for _, points in series for c in calcs] + [0])
    col_w = max(70, 7 * widest + 14)
    name_x = x + 12
    cols_x = [x + w - 12 - col_w * (len(calcs) - i - 1) for i in range(len(calcs))]
    if len(series) > rows:
        fig.text((name_x + 20) / fw, 1 - (ly + row_h / 2) / fh,
                 f"{rows} of {len(series)} series shown (Grafana scrolls the legend)",
                 color=TEXT_DIM, fontsize=8, ha="left", va="center", style="italic")
    if calcs:
        for cx, calc in zip(cols_x, calcs):
            fig.text(cx / fw, 1 - (ly + row_h / 2) / fh, CALC_HEADERS.get(calc, calc),
                     color=PALETTE[5], fontsize=8.5, ha="right", va="center")
    if calcs or len(series) > rows:
        ly += row_h
    for (name, points), color in list(zip(series, colors))[:rows]:
        yy = 1 - (ly + row_h / 2) / fh
        fig.add_artist(Line2D([name_x / fw, (name_x + 14) / fw], [yy, yy], color=color, lw=3,
                              transform=fig.transFigure))
        fig.text((name_x + 20) / fw, yy, name or "(empty legend)", color=TEXT, fontsize=8.5,
                 ha="left", va="center")
        for cx, calc in zip(cols_x, calcs):
            fig.text(cx / fw, yy, fmt_value(reduce(points, calc), unit), color=TEXT,
                     fontsize=8.5, ha="right", va="center")
        ly += row_h
def draw_row(fig, panel, box):
    fw, fh = fig.get_size_inches() * DPI
    x, y, w, h = box
    title = panel.get("title", "")
    collapsed = panel.get("collapsed", False)
    marker = "›" if collapsed else "⌄"
    extra = f"  ({len(panel.get('panels', []))} panels, collapsed)" if collapsed else ""
    fig.text((x + 4) / fw, 1 - (y + h / 2) / fh, f"{marker} {title}{extra}", color="white",
             fontsize=12.5, fontweight="bold", ha="left", va="center")


def render(dashboard, run, out, width, header_lines):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in dashboard.get("panels", [])]
    bottom = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels if "gridPos" in p), default=1)
    fig_w = width
    header_h = 46 + 16 * len(header_lines)
    fig_h = header_h + bottom * GRID_H + GAP
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor=BG)
    fig.text(12 / fig_w, 1 - 14 / fig_h, dashboard.get("title", "dashboard"), color="white",
             fontsize=16, fontweight="bold", ha="left", va="top")
    for i, line in enumerate(header_lines):
        fig.text(12 / fig_w, 1 - (42 + 16 * i) / fig_h, line, color=TEXT_DIM, fontsize=9.5,
                 ha="left", va="top")
    col = (fig_w - GAP) / 24
    color_start = 0
    skipped = []
    for p in panels:
        g = p.get("gridPos")
        if not g:
            skipped.append(f"panel {p.get('id')} {p.get('title')!r}: no gridPos")
            continue
        box = (GAP + g["x"] * col, header_h + g["y"] * GRID_H,
               g["w"] * col - GAP, g["h"] * GRID_H - GAP)
        kind = p.get("type")
        if kind == "row":
            draw_row(fig, p, box)
        elif kind == "stat":
            draw_stat(fig, run, p, box)
        elif kind == "timeseries":
            draw_timeseries(fig, run, p, box, color_start)
        else:
            panel_frame(fig, box, p.get("title", ""))
            fig.text((box[0] + box[2] / 2) / fig_w, 1 - (box[1] + box[3] / 2) / fig_h,
                     f"panel type {kind!r} is not rendered", color=TEXT_DIM, fontsize=11,
                     ha="center", va="center")
            skipped.append(f"panel {p.get('id')} {p.get('title')!r}: type {kind!r} not rendered")
    fig.savefig(out, dpi=DPI, facecolor=BG)
    plt.close(fig)
    return skipped


# ---------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="render-dashboard.py",
        description="Render a Grafana dashboard's panels from its JSON and PromQL against a "
                    "Prometheus, to a PNG.")
    ap.add_argument("--dashboard", default="docker/grafana/dashboards/saga-service.json",
                    help="dashboard JSON (default: %(default)s)")
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090",
                    help="Prometheus base URL (default: %(default)s)")
    ap.add_argument("--from", dest="start", default=None,
                    help="start of the range: unix seconds, RFC 3339 or now-1h "
                         "(default: the dashboard's time.from)")
    ap.add_argument("--to", dest="end", default=None,
                    help="end of the range (default: the dashboard's time.to)")
    ap.add_argument("--scrape-interval", default="15s",
                    help="the scrape interval of the job, for $__rate_interval (default: %(default)s)")
    ap.add_argument("--step", default=None,
                    help="query step, also $__interval (default: the scrape interval, or "
                         "range/400 when that is longer)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="value of a dashboard variable (default: its 'All' value); repeatable")
    ap.add_argument("--width", type=int, default=1600, help="image width in pixels (default: %(default)s)")
    ap.add_argument("--note", action="append", default=[],
                    help="a line of text under the title (e.g. what load ran); repeatable")
    ap.add_argument("--timeout", type=float, default=30, help="seconds per query (default: %(default)s)")
    ap.add_argument("--out", default="dashboard.png", help="PNG to write (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        args.scrape_s = parse_duration(args.scrape_interval)
        args.step_s = parse_duration(args.step) if args.step else None
        args.vars = {}
        for item in args.var:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ValueError(f"--var {item!r}: expected NAME=VALUE")
            args.vars[name] = value
    except ValueError as e:
        ap.error(str(e))
    return ap, args


def main(argv):
    ap, args = parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Fatal("matplotlib is not installed for this Python; use a venv with it "
                    "(scripts/dashboard-screenshot.sh makes target/dash-venv)") from None
    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        raise Fatal(f"cannot read the dashboard {args.dashboard}: {e}") from None

    now = dt.datetime.now(dt.timezone.utc).timestamp()
    time_range = dashboard.get("time", {})
    try:
        start = parse_time(args.start or time_range.get("from", "now-1h"), now)
        end = parse_time(args.end or time_range.get("to", "now"), now)
    except ValueError as e:
        ap.error(str(e))
    if end <= start:
        ap.error("--to must be after --from")
    rng = end - start
    step = args.step_s or max(args.scrape_s, math.ceil(rng / 400))
    rate_interval = max(step + args.scrape_s, 4 * args.scrape_s)

    prom = Prometheus(args.prometheus, args.timeout)
    prom.check()
    values = {
        "__interval": prom_duration(step),
        "__interval_ms": str(int(step * 1000)),
        "__rate_interval": prom_duration(rate_interval),
        "__range": prom_duration(rng),
        "__range_s": str(int(rng)),
        "__range_ms": str(int(rng * 1000)),
    }
    values.update(resolve_variables(dashboard, prom, args.vars))
    regex_problems = check_regex_use(dashboard, values)

    run = Run(prom, start, end, step, values)
    fmt = "%Y-%m-%d %H:%M:%S"
    shown_vars = ", ".join(f"{v['name']}={args.vars.get(v['name'], 'All')}"
                           for v in dashboard.get("templating", {}).get("list", [])
                           if v.get("type") != "datasource")
    header = [
        f"{dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime(fmt)} to "
        f"{dt.datetime.fromtimestamp(end, dt.timezone.utc).strftime(fmt)} UTC ({int(rng)} s), "
        f"step {step:g} s, $__rate_interval {values['__rate_interval']}; {shown_vars}",
        "Not a Grafana screenshot: the dashboard's own panels and queries, rendered by "
        f"scripts/render-dashboard.py from Prometheus at {args.prometheus}",
    ] + args.note
    skipped = render(dashboard, run, args.out, args.width, header)

    print(f"{PROG}: wrote {args.out}: {run.queries} queries over {int(rng)} s")
    for line in skipped + run.notes:
        warn(line)
    if run.no_data:
        warn(f"{len(run.no_data)} of {run.queries} queries returned no data:")
        for where, expr, why in run.no_data:
            warn(f"  {where}: {why}: {expr}")
    if regex_problems:
        warn(f"{len(regex_problems)} uses of a multi-value variable outside =~ (see above)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fatal as e:
        warn(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
