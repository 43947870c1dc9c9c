"""
Synthetic ``pass.json`` documents for the season map's tests (no bag, no Ray).

A pass drives north along ``east_m`` from ``LAT0, LON0`` with a frame every 0.5 m; with
camera geometry its camera looks left (west) across the alley at a canopy
:data:`CANOPY_M` away (a 70 deg field of view), its footprints at every frame.
"""

import numpy as np

from bag_builder import NS
from leaf_disease_ros.geo.camera_geometry import camera_model_from_hfov, mount_from_angles
from leaf_disease_ros.geo.footprint import footprint_polygon_m
from leaf_disease_ros.geo.geodesy import local_east_north_m, offset_latlon

LAT0, LON0 = 44.9, -0.15
CANOPY_M = 2.0  # the camera looks across the alley at the next row


def ll(east_m, north_m):
    """Return (lat, lon) of a point east / north of the origin."""
    return offset_latlon(LAT0, LON0, east_m, north_m)


def en(lat, lon):
    """Return (east, north) metres of a position from the origin."""
    return np.array(local_east_north_m(lat, lon, LAT0, LON0))


def polygon():
    """Return the wedge of a 70 deg camera looking left at a canopy 2 m away (robot frame)."""
    return footprint_polygon_m(camera_model_from_hfov(640, 480, 70.0),
                               mount_from_angles(90.0, 0.0, 1.0), CANOPY_M, 0.2)


def pass_document(bag_id, day, features=(), geometry=True, old=False, east_m=0.0,
                  length_m=20.0, held_from_m=None):
    """Return a ``pass.json`` of a pass north along ``east_m`` (judged, or held beyond)."""
    start_ns = (1_717_200_000 + day * 86400) * NS
    track = [list(ll(east_m, 0.5 * k)) for k in range(int(length_m / 0.5) + 1)]
    held_from = len(track) if held_from_m is None else int(held_from_m / 0.5)
    judged, held = track[:held_from], track[held_from:]
    coverage = {'driven_m': length_m, 'judged_m': 0.5 * max(0, len(judged) - 1),
                'out_of_domain_m': 0.5 * max(0, len(held) - 1), 'without_images_m': 0.0,
                'frames_read': len(track), 'frames_judged': len(judged),
                'frames_out_of_domain': len(held), 'frames_without_position': 0,
                'frames_without_image': 0, 'judged_track': [judged] if judged else []}
    if not old:
        coverage['held_track'] = [held] if held else []
        coverage['footprint'] = None
        coverage['footprint_note'] = 'ground_positions is false: no camera geometry'
        if geometry:
            coverage['footprint'] = {
                'camera': 'hfov (no camera_info)', 'frame_px': [640, 480],
                'canopy_distance_m': CANOPY_M, 'depth_band_m': 0.2,
                'polygon_robot_m': polygon().tolist(),
                'judged_poses': [[lat, lon, 90.0] for lat, lon in judged],
                'held_poses': [[lat, lon, 90.0] for lat, lon in held],
                'frames_without_heading': 0}
            coverage['footprint_note'] = ''
    return {
        'format': 1 if old else 2, 'status': 'done', 'bag_id': bag_id, 'bag': f'/bags/{bag_id}',
        'key': 'k', 'robot': 'robotA', 'start_ns': start_ns, 'end_ns': start_ns + 60 * NS,
        'start_utc': f'2024-06-{day:02d}T08:00:00.000Z',
        'end_utc': f'2024-06-{day:02d}T08:01:00.000Z', 'labels': ['esca', 'healthy'],
        'features': [{'label': 'esca', 'latitude_deg': lat, 'longitude_deg': lon, 'count': 3,
                      'score_max': 0.9, 'score_mean': 0.8,
                      'first_stamp_ns': start_ns + NS, 'last_stamp_ns': start_ns + 2 * NS,
                      'confirmed_sightings': 1} for lat, lon in features],
        'track': [track], 'coverage': coverage}
