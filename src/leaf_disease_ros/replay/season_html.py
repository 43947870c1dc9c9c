"""
``season/report.html``: the season as one self-contained page with a pass selector.

The conventions of the replay's ``report.html`` (:mod:`.report_html`): everything
inline (styles, script, no external resource), so it opens offline. It shows the
season's summary, a selector of passes (robot and date, shown in the reader's local
time; the files keep UTC), an SVG map in Web Mercator coordinates where the chosen
pass's track is drawn with the spots it saw (discs) and the ones it drove past
without seeing (rings), "all passes" showing every spot coloured by label; the table
of spots (first / last seen, passes seen and missed, trend) filtered by the chosen
pass; the coverage of every pass (driven, judged, out of domain, without images,
frames without position, and the rule by which it "drove past" a spot: the camera
footprint, or a radius around its judged path and why); with a row layout
(``--rows``), the rows on the map (never-covered ones dashed) and a table of rows, the
never-covered ones first, with the share of each row the chosen pass covered; and the
bags that failed, with their errors.
"""

import html
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from leaf_disease_ros.geo.mapping import iso_utc, label_colour_bgr
from leaf_disease_ros.perception.atomic_io import atomic_write_text
from leaf_disease_ros.replay.report_html import MAP_PX, mercator_px
from leaf_disease_ros.replay.season_map import pass_map_file, pass_name, Season
from leaf_disease_ros.replay.season_rows import RowCoverage

SEASON_HTML_FILE = 'report.html'


def _e(value: Any) -> str:
    return html.escape(str(value))


def _hex(label: str, labels: Sequence[str]) -> str:
    b, g, r = label_colour_bgr(label, labels)
    return f'#{r:02x}{g:02x}{b:02x}'


def _time(iso: str) -> str:
    """Return a UTC time the page's script rewrites in the reader's local time."""
    return f'<time datetime="{_e(iso)}">{_e(iso)}</time>'


def _projection(season: Season, rows: Optional[RowCoverage] = None) -> Any:
    points: List[Tuple[float, float]] = [(f.latitude_deg, f.longitude_deg)
                                         for f in season.features]
    for document in season.passes:
        points += [(p[0], p[1]) for segment in document.get('track', []) for p in segment]
    for row in (rows.layout.rows if rows is not None else ()):
        points += list(zip(row.latitudes_deg, row.longitudes_deg))
    if not points:
        return None
    lats = [p[0] for p in points]
    lons = [p[1] for p in points]
    x0, y1 = mercator_px(min(lats), min(lons), 0)
    x1, y0 = mercator_px(max(lats), max(lons), 0)
    margin = 30.0
    zoom = min(24.0, math.log2((MAP_PX - 2 * margin) / max(x1 - x0, y1 - y0, 1e-12)))
    ox, oy = mercator_px(max(lats), min(lons), zoom)

    def xy(lat: float, lon: float) -> Tuple[float, float]:
        x, y = mercator_px(lat, lon, zoom)
        return x - ox + margin, y - oy + margin
    return xy


def _map_svg(season: Season, rows: Optional[RowCoverage] = None) -> str:
    xy = _projection(season, rows)
    if xy is None:
        return '<p class="empty">No positioned findings and no GPS track: nothing to map.</p>'
    labels = season.labels
    groups: List[str] = []
    if rows is not None:
        never = set(rows.never_covered)
        lines = []
        for row in rows.layout.rows:
            path = ' '.join(f'{a:.1f},{b:.1f}' for a, b in (
                xy(lat, lon) for lat, lon in zip(row.latitudes_deg, row.longitudes_deg)))
            state = 'row never' if row.row_id in never else 'row'
            lines.append(f'<polyline class="{state}" points="{path}"><title>row '
                         f'{_e(row.row_id)}{" (never covered)" if row.row_id in never else ""}'
                         '</title></polyline>')
        groups.append('<g class="rows">' + ''.join(lines) + '</g>')
    every = []
    for feature in season.features:
        x, y = xy(feature.latitude_deg, feature.longitude_deg)
        radius = 4.0 + 2.0 * math.sqrt(len(feature.seen))
        every.append(f'<circle class="finding" cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" '
                     f'fill="{_hex(feature.label, labels)}"><title>{_e(feature.label)}, '
                     f'{feature.trend}: seen by {len(feature.seen)} pass(es), missed by '
                     f'{len(feature.missed)}</title></circle>')
    groups.append('<g class="pass" data-pass="all">' + ''.join(every) + '</g>')
    for document in season.passes:
        bag = document['bag_id']
        parts = []
        for segment in document.get('track', []):
            if len(segment) > 1:
                path = ' '.join(f'{a:.1f},{b:.1f}' for a, b in (xy(p[0], p[1]) for p in segment))
                parts.append(f'<polyline class="track" points="{path}"/>')
        for feature in season.features:
            x, y = xy(feature.latitude_deg, feature.longitude_deg)
            colour = _hex(feature.label, labels)
            if bag in feature.seen:
                parts.append(f'<circle class="finding seen" cx="{x:.1f}" cy="{y:.1f}" r="7" '
                             f'fill="{colour}"><title>{_e(feature.label)}: seen '
                             f'{feature.seen[bag].count} times</title></circle>')
            elif bag in feature.missed:
                parts.append(f'<circle class="finding missed" cx="{x:.1f}" cy="{y:.1f}" r="7" '
                             f'fill="none" stroke="{colour}"><title>{_e(feature.label)}: '
                             'drove past without seeing it</title></circle>')
        groups.append(f'<g class="pass" data-pass="{_e(bag)}" style="display:none">'
                      + ''.join(parts) + '</g>')
    return (f'<svg id="map" width="{MAP_PX}" height="{MAP_PX}" viewBox="0 0 {MAP_PX} {MAP_PX}" '
            'role="img" aria-label="season map">' + ''.join(groups) + '</svg>')


def _feature_rows(season: Season) -> str:
    rows = []
    for feature in season.features:
        seen = ' '.join(p['bag_id'] for p in season.passes if p['bag_id'] in feature.seen)
        rows.append(
            f'<tr class="spot" data-seen="{_e(seen)}" '
            f'data-missed="{_e(" ".join(feature.missed))}">'
            f'<td style="text-align:left"><i style="background:'
            f'{_hex(feature.label, season.labels)}"></i>{_e(feature.label)}</td>'
            f'<td>{feature.latitude_deg:.6f}, {feature.longitude_deg:.6f}</td>'
            f'<td>{_time(iso_utc(feature.first_seen_ns))}</td>'
            f'<td>{_time(iso_utc(feature.last_seen_ns))}</td>'
            f'<td>{len(feature.seen)}</td><td>{len(feature.missed)}</td>'
            f'<td class="trend">{_e(feature.trend)}</td></tr>')
    return ('<table id="spots"><tr><th>label</th><th>position</th><th>first seen</th>'
            '<th>last seen</th><th>passes seen</th><th>passes missed</th><th>trend</th></tr>'
            + ''.join(rows) + '</table>')


def _rule_cell(rule: Dict[str, Any]) -> str:
    if rule['rule'] == 'footprint':
        return (f'<td class="rule" data-rule="footprint" title="camera: {_e(rule["camera"])}">'
                f'camera footprint (+{rule["tolerance_m"]:g} m)</td>')
    why = f' <span class="muted">({_e(rule["why"])})</span>' if rule['why'] else ''
    return (f'<td class="rule" data-rule="radius" title="{_e(rule["why"])}">'
            f'{rule["radius_m"]:g} m radius{why}</td>')


def _coverage_rows(season: Season) -> str:
    rows = []
    for document in season.passes:
        cov = document['coverage']
        rows.append(
            f'<tr class="coverage" data-pass="{_e(document["bag_id"])}">'
            f'<td style="text-align:left">{_e(document["robot"])}</td>'
            f'<td>{_time(document["start_utc"])}</td>'
            f'<td>{cov["driven_m"]:.0f}</td><td>{cov["judged_m"]:.0f}</td>'
            f'<td>{cov["out_of_domain_m"]:.0f}</td><td>{cov["without_images_m"]:.0f}</td>'
            f'<td>{cov["frames_without_position"]}</td><td>{cov["frames_without_image"]}</td>'
            + _rule_cell(season.drove_past(document['bag_id'])) +
            f'<td><a href="{_e(pass_map_file(document["bag_id"]))}">map</a> '
            f'<a href="bags/{_e(document["bag_id"])}/report.html">report</a></td></tr>')
    return ('<table id="coverage"><tr><th>robot</th><th>pass start</th><th>driven m</th>'
            '<th>judged m</th><th>out of domain m</th><th>without images m</th>'
            '<th>frames without position</th><th>frames without image</th>'
            '<th>drove past by</th><th></th></tr>'
            + ''.join(rows) + '</table>')


def _row_table(rows: RowCoverage) -> str:
    never = rows.never_covered
    fractions: Dict[str, Dict[str, float]] = {}
    for bag, figures in rows.per_pass.items():
        for row_id, values in figures.items():
            fractions.setdefault(row_id, {})[bag] = values['covered_fraction']
    lines = []
    for entry in sorted(rows.rows, key=lambda r: (not r['never_covered'], r['row'])):
        last = entry['last_covered']
        lines.append(
            f'<tr class="row-entry{" never" if entry["never_covered"] else ""}" '
            f'data-fractions="{_e(json.dumps(fractions.get(entry["row"], {})))}">'
            f'<td style="text-align:left">{_e(entry["row"])}</td>'
            f'<td style="text-align:left">{_e(entry["name"])}</td>'
            f'<td>{entry["length_m"]:.0f}</td><td>{len(entry["passes_covered"])}</td>'
            f'<td>{100.0 * entry["covered_fraction_best"]:.0f} %</td>'
            f'<td>{_time(last["start"]) if last else "never"}</td>'
            '<td class="chosen"></td></tr>')
    said = (f'<p id="never-covered" data-count="{len(never)}"><b>{len(never)} of '
            f'{len(rows.rows)} rows were never covered</b> by any pass'
            + (f': {_e(", ".join(never))}.' if never else '.') + '</p>')
    return (said + f'<p class="muted">Layout <code>{_e(rows.layout.path)}</code>; a part of a '
            'row is covered by a pass when a frame it judged looked at it (its camera '
            'footprint, else its judged path within the past radius), sampled every '
            '0.5 m.</p><table id="rows"><tr><th>row</th><th>name</th><th>length m</th>'
            '<th>passes covering</th><th>best covered</th><th>last covered</th>'
            '<th>chosen pass covered</th></tr>' + ''.join(lines) + '</table>')


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 20px; color: #1d1d1d; max-width: 1200px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; } .muted, .empty { color: #777; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
td i { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; }
#map { border: 1px solid #bbb; background: #f4f7f1; }
#map .track { fill: none; stroke: #888; stroke-width: 2; }
#map .finding { stroke-width: 2; fill-opacity: 0.85; } #map .seen { stroke: #222; }
#map .row { fill: none; stroke: #6a9a4a; stroke-width: 2; }
#map .never { stroke: #c0392b; stroke-dasharray: 6 4; } tr.never td { background: #fbeaea; }
"""

_SCRIPT = """
(function () {
  document.querySelectorAll('time').forEach(function (t) {
    var d = new Date(t.getAttribute('datetime'));
    if (!isNaN(d)) { t.textContent = d.toLocaleString(); t.title = t.getAttribute('datetime'); }
  });
  document.querySelectorAll('#pass option[data-start]').forEach(function (o) {
    var d = new Date(o.dataset.start);
    if (!isNaN(d)) { o.textContent = o.dataset.robot + ' ' + d.toLocaleString(); }
  });
  var select = document.getElementById('pass');
  function show() {
    var chosen = select.value;
    document.querySelectorAll('#map g.pass').forEach(function (g) {
      g.style.display = g.dataset.pass === chosen ? '' : 'none';
    });
    document.querySelectorAll('#spots tr.spot').forEach(function (row) {
      var seen = row.dataset.seen.split(' '), missed = row.dataset.missed.split(' ');
      row.style.display = (chosen === 'all' || seen.indexOf(chosen) >= 0
                           || missed.indexOf(chosen) >= 0) ? '' : 'none';
    });
    document.querySelectorAll('#rows tr.row-entry').forEach(function (row) {
      var fractions = JSON.parse(row.dataset.fractions), cell = row.querySelector('.chosen');
      cell.textContent = chosen === 'all' ? '' : (chosen in fractions
        ? Math.round(100 * fractions[chosen]) + ' %' : '0 %');
    });
    document.getElementById('shown').textContent = chosen;
  }
  select.addEventListener('change', show);
  show();
})();
"""


def build_season_html(season: Season, summary: Dict[str, Any],
                      rows: Optional[RowCoverage] = None) -> str:
    """Return the page (module docstring) for a season, its summary and row coverage."""
    options = ['<option value="all">all passes</option>'] + [
        f'<option value="{_e(p["bag_id"])}" data-start="{_e(p["start_utc"])}" '
        f'data-robot="{_e(p["robot"])}">{_e(pass_name(p))}</option>' for p in season.passes]
    failed = summary.get('failed', [])
    failures = ''.join(f'<li><code>{_e(f["bag"])}</code>: {_e(f["error"])}</li>'
                       for f in failed)
    footprints = sum(1 for p in season.passes
                     if season.drove_past(p['bag_id'])['rule'] == 'footprint')
    trends: Dict[str, int] = {}
    for feature in season.features:
        trends[feature.trend] = trends.get(feature.trend, 0) + 1
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Season report</title><style>{_STYLE}</style></head><body>'
        '<h1>Season report</h1>'
        f'<section id="summary" data-passes="{len(season.passes)}" '
        f'data-features="{len(season.features)}" data-failed="{len(failed)}">'
        f'<p>{len(season.passes)} passes of {len({p["robot"] for p in season.passes})} '
        f'robot(s), {len(season.features)} spots (merged within {season.merge_radius_m} m; '
        '"missed": a pass did not see the spot although the camera footprint of a frame it '
        f'judged held it, within {season.footprint_tolerance_m:g} m, or, for a pass without '
        f'camera geometry, it judged frames within {season.past_radius_m:g} m of it: '
        f'{footprints} by the footprint, {len(season.passes) - footprints} by the radius). '
        f'Trends: {_e(", ".join(f"{k} {v}" for k, v in sorted(trends.items())))}.'
        f' Times are shown in your local time (hover: UTC).</p></section>'
        '<section id="passes"><h2>Map</h2><p><label>Pass: <select id="pass">'
        + ''.join(options) + '</select></label> showing <code id="shown"></code></p>'
        + _map_svg(season, rows) + '</section>'
        + f'<section id="features"><h2>Spots</h2>{_feature_rows(season)}</section>'
        + f'<section id="coverage-section"><h2>Coverage per pass</h2>{_coverage_rows(season)}'
          '</section>'
        + (f'<section id="rows-section"><h2>Rows</h2>{_row_table(rows)}</section>'
           if rows is not None else '')
        + f'<section id="failed" data-count="{len(failed)}"><h2>Bags that failed</h2>'
        + (f'<ul>{failures}</ul>' if failed else '<p>None.</p>') + '</section>'
        + f'<script type="application/json" id="season-facts">{json.dumps(summary["counts"])}'
          '</script>'
        + f'<script>{_SCRIPT}</script></body></html>\n')


def write_season_html(path: str, season: Season, summary: Dict[str, Any],
                      rows: Optional[RowCoverage] = None) -> None:
    """Write the season page atomically."""
    atomic_write_text(path, build_season_html(season, summary, rows))
