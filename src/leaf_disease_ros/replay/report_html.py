"""
``report.html``: the replay's field report as one self-contained page an agronomist opens.

Everything is inside the file (styles, script, pictures as data URIs); opening it
makes no network request, so it works offline in any browser. It shows:

- the summary (bag, model, frames, tiles, unknown rate, accuracy, geotag coverage,
  findings) and the notes of the run;
- the confusion matrix against ground truth (when the bag has it), as a table;
- the map: an SVG of the GPS track and the merged findings (circle area ~ sightings,
  colour = label) in Web Mercator coordinates (north up), with a north arrow, a
  scale bar and the latitude / longitude of its corners. A button lays
  OpenStreetMap tiles under it; only that button, when pressed and online, fetches
  anything;
- the gallery: the most confident findings and the most uncertain tiles
  (:mod:`.gallery`), each with its saliency overlay, label and top-k, GPS position
  (latitude, longitude, the fix status in words), image stamp (UTC) and the frame's
  time in the bag with the ``ros2 bag play`` command that starts there.

People read the model card's display names (``Black rot``), never a machine path:
the page names the bag by its folder or file name, so it reads the same wherever it
is opened (``metrics.json`` keeps the full path).
"""

import base64
import datetime
import html
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from leaf_disease_ros.geo.geodesy import distance_m
from leaf_disease_ros.geo.mapping import DisplayNames, label_colour_bgr, MapFeature, shown_name
from leaf_disease_ros.perception.atomic_io import atomic_write_text
from leaf_disease_ros.perception.metrics import macro_average_note
from leaf_disease_ros.perception.positions import fix_status_words
from leaf_disease_ros.replay.evaluation import accuracy_text
from leaf_disease_ros.replay.gallery import GalleryTile, SECTIONS
from leaf_disease_ros.replay.report import finding_score_words, utm_zone_sentence
from leaf_disease_ros.replay.runner import ReplayState

REPORT_HTML_FILE = 'report.html'
MAP_PX = 720
OSM_MAX_ZOOM = 19
SECTION_TITLES = {'confident': 'Most confident findings',
                  'uncertain': 'Most uncertain tiles'}


def _macro_note(accuracy: Dict[str, Any]) -> str:
    """Say which classes the macro-F1 averages, or that no tile was scored."""
    if accuracy.get('accuracy') is None or 'macro_f1_labels' not in accuracy:
        return 'no tile scored'
    return macro_average_note(accuracy) or 'macro-F1 over all classes'


def _e(value: Any) -> str:
    return html.escape(str(value))


def _md_e(text: str) -> str:
    """Escape a report.md sentence for HTML, its `code` spans as <code>."""
    return re.sub(r'`([^`]*)`', r'<code>\1</code>', _e(text))


def _hex(label: str, labels: Sequence[str]) -> str:
    b, g, r = label_colour_bgr(label, labels)
    return f'#{r:02x}{g:02x}{b:02x}'


def _iso(stamp_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(stamp_ns / 1e9, tz=datetime.timezone.utc)
    return moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')


def mercator_px(latitude_deg: float, longitude_deg: float, zoom: float) -> Tuple[float, float]:
    """Return Web Mercator (slippy map) pixel coordinates at a (fractional) zoom."""
    scale = 256.0 * 2.0 ** zoom
    x = (longitude_deg + 180.0) / 360.0 * scale
    lat = math.radians(max(-85.05112878, min(85.05112878, latitude_deg)))
    y = (1.0 - math.log(math.tan(lat) + 1.0 / math.cos(lat)) / math.pi) / 2.0 * scale
    return x, y


def _map_svg(features: Sequence[MapFeature], track: Sequence[Sequence[Tuple[float, float]]],
             labels: Sequence[str], names: DisplayNames = None) -> Tuple[str, Dict[str, Any]]:
    """Return the SVG of track and findings and the facts the OSM button needs."""
    points = [(f.latitude_deg, f.longitude_deg) for f in features]
    points += [p for segment in track for p in segment]
    if not points:
        return ('<p class="empty">No positioned findings and no GPS track: nothing to map.</p>',
                {})
    lats = [p[0] for p in points]
    lons = [p[1] for p in points]
    x0, y1 = mercator_px(min(lats), min(lons), 0)
    x1, y0 = mercator_px(max(lats), max(lons), 0)
    span = max(x1 - x0, y1 - y0, 1e-12)
    margin = 30.0
    zoom = min(24.0, math.log2((MAP_PX - 2 * margin) / span))
    origin_x, origin_y = mercator_px(max(lats), min(lons), zoom)
    origin_x -= margin
    origin_y -= margin

    def xy(lat: float, lon: float) -> Tuple[float, float]:
        x, y = mercator_px(lat, lon, zoom)
        return x - origin_x, y - origin_y
    parts: List[str] = ['<g id="osm"></g>']
    for segment in track:
        if len(segment) > 1:
            path = ' '.join(f'{a:.1f},{b:.1f}' for a, b in (xy(*p) for p in segment))
            parts.append(f'<polyline class="track" points="{path}"/>')
    for feature in features:
        x, y = xy(feature.latitude_deg, feature.longitude_deg)
        radius = 4.0 + 2.0 * math.sqrt(feature.count)
        parts.append(
            f'<circle class="finding" cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" '
            f'fill="{_hex(feature.label, labels)}"><title>'
            f'{_e(shown_name(feature.label, names))}: {feature.count} sightings, score max '
            f'{feature.score_max:.2f}, {_latlon(feature.latitude_deg, feature.longitude_deg)}'
            '</title></circle>')
    # scale bar: metres per pixel at the map's centre latitude
    centre_lat = (min(lats) + max(lats)) / 2.0
    metres_per_px = distance_m(centre_lat, min(lons), centre_lat, min(lons) + 1e-4) / (
        mercator_px(centre_lat, min(lons) + 1e-4, zoom)[0]
        - mercator_px(centre_lat, min(lons), zoom)[0])
    bar_m = _nice(metres_per_px * MAP_PX / 5.0)
    bar_px = bar_m / metres_per_px
    parts.append(f'<g class="scale"><line x1="20" y1="{MAP_PX - 20}" x2="{20 + bar_px:.1f}" '
                 f'y2="{MAP_PX - 20}"/><text x="20" y="{MAP_PX - 26}">{bar_m:g} m</text></g>')
    # north arrow (Web Mercator: north is up) and the corners' latitude / longitude
    parts.append(f'<g class="north" aria-label="north"><path d="M {MAP_PX - 30} 24 L '
                 f'{MAP_PX - 38} 48 L {MAP_PX - 30} 42 L {MAP_PX - 22} 48 Z"/>'
                 f'<text x="{MAP_PX - 35}" y="18">N</text></g>')
    north_west = _latlon(*_mercator_latlon(origin_x, origin_y, zoom))
    south_east = _latlon(*_mercator_latlon(origin_x + MAP_PX, origin_y + MAP_PX, zoom))
    parts.append(f'<text class="corner" x="6" y="14">{north_west}</text>'
                 f'<text class="corner" x="{MAP_PX - 6}" y="{MAP_PX - 6}" '
                 f'text-anchor="end">{south_east}</text>')
    svg = (f'<svg id="map" width="{MAP_PX}" height="{MAP_PX}" '
           f'viewBox="0 0 {MAP_PX} {MAP_PX}" role="img" aria-label="map of findings">'
           + ''.join(parts) + '</svg>')
    tile_zoom = min(OSM_MAX_ZOOM, int(math.floor(zoom)))
    facts = {'zoom': zoom, 'tile_zoom': tile_zoom, 'origin_x': origin_x,
             'origin_y': origin_y, 'size': MAP_PX}
    return svg, facts


def _latlon(latitude_deg: float, longitude_deg: float) -> str:
    return f'lat {latitude_deg:.6f}, lon {longitude_deg:.6f}'


def _mercator_latlon(x: float, y: float, zoom: float) -> Tuple[float, float]:
    """Return (latitude, longitude) of Web Mercator pixel coordinates (inverse of mercator_px)."""
    scale = 256.0 * 2.0 ** zoom
    longitude = x / scale * 360.0 - 180.0
    latitude = math.degrees(math.atan(math.sinh(math.pi * (1.0 - 2.0 * y / scale))))
    return latitude, longitude


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= value:
            return step * power
    return 10.0 * power


def _confusion_table(accuracy: Optional[Dict[str, Any]]) -> str:
    if accuracy is None:
        return '<p class="empty">The bag has no ground truth: no confusion matrix.</p>'
    labels = accuracy['labels']
    head = ''.join(f'<th>{_e(label)}</th>' for label in labels)
    rows = []
    for label, row in zip(labels, accuracy['confusion_matrix']):
        total = max(1, sum(row))
        cells = ''.join(
            f'<td style="background:rgba(40,90,200,{0.75 * value / total:.2f})">{value}</td>'
            for value in row)
        rows.append(f'<tr><th>{_e(label)}</th>{cells}</tr>')
    return (f'<p>Tile <b>{_e(accuracy_text(accuracy))}</b> over {accuracy["count"]} tiles '
            f'({_e(_macro_note(accuracy))}; unknown '
            f'{accuracy["unknown_count"]}, counted wrong). Rows: true label, '
            'columns: predicted.</p>'
            f'<table id="confusion" class="matrix"><tr><th>true \\ predicted</th>{head}</tr>'
            + ''.join(rows) + '</table>')


def _figure(tile: GalleryTile, bag_name: str, bag_start_ns: Optional[int],
            names: DisplayNames = None) -> str:
    offset_s = ((tile.log_time_ns - bag_start_ns) / 1e9 if bag_start_ns is not None else 0.0)
    if tile.latitude_deg is not None and tile.longitude_deg is not None:
        status = ('' if tile.fix_status is None
                  else f' <span class="muted">({_e(fix_status_words(tile.fix_status))})</span>')
        where = _latlon(tile.latitude_deg, tile.longitude_deg) + status
    else:
        where = '<span class="muted">no position</span>'
    top = ', '.join(f'{_e(shown_name(label, names))} {score:.3f}' for label, score in tile.top_k)
    distance = ('' if tile.distance is None
                else f'<br>distance to training data {tile.distance:.2f}')
    picture = base64.b64encode(tile.overlay_jpeg).decode('ascii')
    image = (f'<img alt="saliency of a {_e(tile.label)} tile" '
             f'src="data:image/jpeg;base64,{picture}">' if picture
             else '<div class="noimg">no saliency</div>')
    command = f'ros2 bag play {bag_name} --start-offset {max(0.0, offset_s - 1.0):.1f}'
    return (f'<figure class="tile" data-label="{_e(tile.label)}" data-score="{tile.score:.4f}">'
            f'{image}<figcaption><b>{_e(shown_name(tile.label, names))}</b> {tile.score:.3f}'
            f'<br>top-k: {top}{distance}'
            f'<br>GPS: {where}'
            f'<br>stamp: {_iso(tile.stamp_ns)}'
            f'<br>frame: {offset_s:.2f} s into the bag, box {list(tile.box_xyxy_px)}'
            '<br><code title="play the bag from just before this frame (run it in the folder '
            f'that holds the bag)">{_e(command)}</code>'
            '</figcaption></figure>')


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 20px; color: #1d1d1d; max-width: 1200px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.muted, .empty { color: #777; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
.matrix td { min-width: 48px; text-align: center; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 140px; }
.card b { display: block; font-size: 1.4em; }
#map { border: 1px solid #bbb; background: #f4f7f1; }
#map .track { fill: none; stroke: #888; stroke-width: 2; }
#map .finding { stroke: #222; stroke-width: 1; fill-opacity: 0.85; }
#map .scale line { stroke: #222; stroke-width: 3; } #map .scale text { font-size: 12px; }
#map .north path { fill: #222; } #map .north text { font-size: 13px; font-weight: bold; }
#map .corner { font-size: 10px; fill: #555; }
.legend span { margin-right: 14px; } .legend i { display: inline-block; width: 10px;
  height: 10px; border-radius: 5px; margin-right: 4px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure.tile { margin: 0; width: 260px; border: 1px solid #ddd; border-radius: 6px;
  padding: 6px; font-size: 12px; }
figure.tile img { width: 256px; height: auto; display: block; }
figure.tile code { font-size: 10px; word-break: break-all; }
"""

_SCRIPT = """
(function () {
  var button = document.getElementById('osm-button');
  if (!button) { return; }
  var facts = JSON.parse(document.getElementById('map-facts').textContent);
  button.addEventListener('click', function () {
    var layer = document.getElementById('osm');
    if (layer.childNodes.length) { layer.textContent = ''; return; }
    var scale = Math.pow(2, facts.zoom - facts.tile_zoom);
    var side = 256 * scale;
    var x0 = Math.floor(facts.origin_x / side), y0 = Math.floor(facts.origin_y / side);
    var x1 = Math.floor((facts.origin_x + facts.size) / side);
    var y1 = Math.floor((facts.origin_y + facts.size) / side);
    for (var x = x0; x <= x1; x++) {
      for (var y = y0; y <= y1; y++) {
        var img = document.createElementNS('http://www.w3.org/2000/svg', 'image');
        img.setAttribute('href', 'https://tile.openstreetmap.org/' + facts.tile_zoom + '/'
                         + x + '/' + y + '.png');
        img.setAttribute('x', x * side - facts.origin_x);
        img.setAttribute('y', y * side - facts.origin_y);
        img.setAttribute('width', side);
        img.setAttribute('height', side);
        layer.appendChild(img);
      }
    }
  });
})();
"""


def _held_section(held: Dict[str, Any]) -> str:
    """Return the section on the findings the domain check held back (never mapped)."""
    count = held.get('count', 0)
    if count:
        by_label = ', '.join(f'{_e(k)} {v}' for k, v in held.get('by_label', {}).items())
        body = (f'<p><b>{count} diseased tiles were held back</b> from the map and '
                f'geo_detections (never released later): {_e(held.get("reason", ""))}. '
                f'By label: {by_label}.</p>')
    else:
        body = '<p>None: the domain check held no finding back.</p>'
    return (f'<section id="held" data-count="{count}"><h2>Findings held back</h2>'
            f'{body}</section>')


def build_report_html(metrics: Dict[str, Any], state: ReplayState) -> str:
    """Return the page (see the module doc) for a finished replay and its metrics."""
    labels = list(state.labels)
    names = metrics['model'].get('display_names')
    features = state.merger.features()
    svg, facts = _map_svg(features, state.track.segments(), labels, names)
    bag = metrics['bag']
    frames = metrics['frames']
    tiles = metrics['tiles']
    geo = metrics['geotag']
    findings = metrics['findings']
    accuracy = metrics['accuracy']
    model = metrics['model']
    cards = [
        ('frames processed', f"{frames['processed']} / {frames['in_bag']}"),
        ('tiles classified', tiles['classified']),
        ('unknown', f"{100.0 * tiles['unknown_rate']:.1f} %"),
        ('tile accuracy', ('no ground truth' if not accuracy else 'nothing scored'
                           if accuracy['accuracy'] is None else f"{accuracy['accuracy']:.3f}")),
        ('geotag coverage', f"{100.0 * geo['coverage']:.1f} %"),
        ('UTM zone', 'none' if geo['utm_zone'] is None
         else f"{geo['utm_zone']['zone']} (EPSG:{geo['utm_zone']['epsg']})"),
        ('findings', f"{findings['sightings']} tiles, {findings['features']} spots"),
    ]
    legend = ' '.join(f'<span><i style="background:{_hex(label, labels)}"></i>'
                      f'{_e(shown_name(label, names))}'
                      f' ({count})</span>'
                      for label, count in findings['features_by_label'].items())
    gallery = state.gallery
    bag_name = os.path.basename(bag['path'].rstrip('/'))
    sections: List[str] = []
    for name in SECTIONS:
        kept = gallery.sections[name] if gallery is not None else []
        body = ''.join(_figure(tile, bag_name, state.first_log_time_ns, names) for tile in kept)
        if not kept:
            body = '<p class="empty">none</p>'
        note = ('diseased tiles with the highest scores (one per leaf)' if name == 'confident'
                else 'classified tiles with the lowest top-1 scores, unknown included')
        sections.append(f'<section id="{name}" data-count="{len(kept)}">'
                        f'<h3>{SECTION_TITLES[name]} ({len(kept)})</h3>'
                        f'<p class="muted">{note}</p><div class="gallery">{body}</div></section>')
    saliency = gallery.saliency if gallery is not None else {}
    saliency_note = (f"Saliency: {saliency['method']} on a {saliency['grid']}x"
                     f"{saliency['grid']} grid through the replay's backend, "
                     f"{saliency['inferences']} inferences in {saliency['batched_calls']} "
                     f"batched calls, {saliency['ms_per_tile']:.0f} ms per tile. Red: "
                     'hiding this part lowers the score most.') if saliency else ''
    notes = ''.join(f'<li>{_e(note)}</li>' for note in metrics['notes'])
    osm = ('<p><button id="osm-button" type="button">OpenStreetMap background (online)'
           '</button> <span class="muted">fetches map tiles only when pressed</span></p>'
           if facts else '')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Field report: {_e(bag_name)}</title>'
        f'<style>{_STYLE}</style></head><body>'
        f'<h1>Field report</h1><p class="muted">Bag <code>{_e(bag_name)}</code> '
        f'({_e(bag["storage"])}, {bag["duration_read_s"]:.1f} s); model '
        f'{_e(model.get("model", "?"))} ({_e(model.get("backend", "?"))}, '
        f'{_e(model.get("model_id", ""))})</p>'
        + ('' if bag['complete'] else
           f'<p><b>The bag ended early: {_e(bag["truncated_reason"])}.</b></p>')
        + '<section id="summary"><h2>Summary</h2><div class="cards">'
        + ''.join(f'<div class="card">{_e(name)}<b>{_e(value)}</b></div>'
                  for name, value in cards)
        + '</div>' + (f'<ul class="notes">{notes}</ul>' if notes else '') + '</section>'
        + f'<section id="accuracy"><h2>Confusion matrix</h2>{_confusion_table(accuracy)}'
          '</section>'
        + '<section id="findings-map"><h2>Map of findings</h2>'
          f'<p>{findings["sightings"]} diseased tiles with '
          f'{_e(finding_score_words(model))} of at least '
          f'{model["finding_threshold"]:g}, merged within '
          f'{findings["merge_radius_m"]} m into {findings["features"]} spots '
          f'({findings["without_position"]} without position). Grey: GPS track.</p>'
          f'<p id="utm-zone">{_md_e(utm_zone_sentence(geo["utm_zone"]))}</p>'
          f'<p class="legend">{legend}</p>{osm}{svg}'
          f'<script type="application/json" id="map-facts">{json.dumps(facts)}</script>'
          '</section>'
        + _held_section(findings.get('held', {}))
        + f'<section id="gallery"><h2>Gallery</h2><p class="muted">{_e(saliency_note)}</p>'
        + ''.join(sections) + '</section>'
        + f'<script>{_SCRIPT}</script></body></html>\n')


def write_report_html(out_dir: str, metrics: Dict[str, Any], state: ReplayState) -> str:
    """Write ``out_dir/report.html`` atomically; return its path."""
    path = os.path.join(out_dir, REPORT_HTML_FILE)
    atomic_write_text(path, build_report_html(metrics, state))
    return path
