"""
Camera geometry against hand-worked cases: a known camera and leaf give the leaf within 2 cm.

Each case states the geometry in words and works the expected position by hand (or
projects a known leaf into the image with OpenCV's forward model, then places the
pixel back): both mount sides, pitch, a distorted camera (plumb_bob and
equidistant), binning and ROI, a rectified image, and the rays that are rejected.
"""

import math

import cv2
import numpy as np
import pytest

from leaf_disease_ros.geo.camera_geometry import (camera_model_from_hfov,
                                                  camera_model_from_info, CameraGeometryError,
                                                  canopy_points, depth_points,
                                                  leaf_covariance_enu, mount_from_angles,
                                                  mount_from_quaternion, pixel_rays,
                                                  REJECT_AWAY, REJECT_GROUND, REJECT_PARALLEL,
                                                  robot_to_enu)

TOLERANCE_M = 0.02


def pinhole(width=1001, height=601, focal=500.0):
    """Return an ideal calibrated camera: a pixel 500 px from the centre is 45 deg off."""
    k = [focal, 0.0, (width - 1) / 2.0, 0.0, focal, (height - 1) / 2.0, 0.0, 0.0, 1.0]
    return camera_model_from_info(k, [0.0] * 5, 'plumb_bob', [1, 0, 0, 0, 1, 0, 0, 0, 1],
                                  [0.0] * 12, width, height)


def place(model, mount, pixels, canopy_m, heading_rad):
    rays = pixel_rays(model, np.asarray(pixels, dtype=float))
    points, valid, why = canopy_points(rays, mount, canopy_m)
    return robot_to_enu(points, heading_rad), valid, why


def test_a_left_camera_places_its_image_edges_one_canopy_distance_apart_per_45_degrees():
    # Camera looking left (yaw +90), level, 1 m from the canopy, robot heading east.
    # Its image's left edge looks 45 deg back, its right edge 45 deg forward: the leaves
    # there are 1 m behind and 1 m ahead, both 1 m to the left (north): 2 m apart.
    model = pinhole()
    mount = mount_from_angles(90.0, 0.0, 1.0)
    enu, valid, _ = place(model, mount, [[0, 300], [1000, 300], [500, 300]], 1.0, 0.0)
    assert valid.all()
    np.testing.assert_allclose(enu[0], [-1.0, 1.0, 0.0], atol=TOLERANCE_M)
    np.testing.assert_allclose(enu[1], [1.0, 1.0, 0.0], atol=TOLERANCE_M)
    np.testing.assert_allclose(enu[2], [0.0, 1.0, 0.0], atol=TOLERANCE_M)
    assert math.dist(enu[0][:2], enu[1][:2]) == pytest.approx(2.0, abs=TOLERANCE_M)


def test_a_right_camera_on_a_robot_heading_north_places_leaves_east():
    # Camera looking right (yaw -90), heading north (ENU yaw 90 deg): it looks east. Its
    # image's right edge looks backwards (south): the leaf is 1 m east, 1 m south;
    # the left edge's leaf 1 m east, 1 m north.
    model = pinhole()
    mount = mount_from_angles(-90.0, 0.0, 1.0)
    enu, valid, _ = place(model, mount, [[1000, 300], [0, 300]], 1.0, math.pi / 2)
    assert valid.all()
    np.testing.assert_allclose(enu[0], [1.0, -1.0, 0.0], atol=TOLERANCE_M)
    np.testing.assert_allclose(enu[1], [1.0, 1.0, 0.0], atol=TOLERANCE_M)


def test_pitch_raises_the_leaf_and_a_downward_ray_can_meet_the_ground_first():
    # Looking left, pitched 30 deg up, canopy 0.8 m: the centre ray meets the canopy
    # 0.8 tan(30) = 0.462 m above the camera.
    model = pinhole()
    up = mount_from_angles(90.0, 30.0, 1.0)
    enu, valid, _ = place(model, up, [[500, 300]], 0.8, 0.0)
    assert valid.all()
    np.testing.assert_allclose(enu[0], [0.0, 0.8, 0.8 * math.tan(math.radians(30))],
                               atol=TOLERANCE_M)
    # Pitched 45 deg down from 0.5 m: the centre ray reaches the ground 0.5 m away,
    # before the canopy 1 m away; the image's top row (45 deg up: level) still hits it.
    down = mount_from_angles(90.0, -45.0, 0.5)
    _, valid, why = place(model, down, [[500, 300], [500, 0]], 1.0, 0.0)
    assert why[0] == REJECT_GROUND and valid[1]


def test_rays_parallel_to_or_away_from_the_canopy_are_rejected():
    mount = mount_from_angles(90.0, 0.0, 1.0)
    wide = camera_model_from_hfov(1000, 100, 176.0)  # its edge rays are 88 deg off the axis
    rays = pixel_rays(wide, np.array([[0.0, 49.5], [499.5, 49.5]]))
    _, valid, why = canopy_points(rays, mount, 1.0)
    assert why[0] == REJECT_PARALLEL and valid[1]
    _, valid, why = canopy_points(np.array([[0.0, 0.0, -1.0]]), mount, 1.0)
    assert why == (REJECT_AWAY,) and not valid.any()


def robot_to_optical(mount, points_robot):
    return np.asarray(points_robot, dtype=float) @ mount.rotation  # R^T p, row-wise


@pytest.mark.parametrize('yaw_deg', [90.0, -90.0, 70.0])
def test_a_plumb_bob_distorted_camera_places_known_leaves_within_2_cm(yaw_deg):
    # Leaves on the canopy 0.8 m away, across the image; projected with OpenCV's
    # distortion model, then placed back from their (distorted) pixels.
    k = np.array([[600.0, 0, 320.0], [0, 610.0, 240.0], [0, 0, 1]])
    d = np.array([-0.28, 0.09, 0.001, -0.0007, -0.01])
    model = camera_model_from_info(k.reshape(-1), d, 'plumb_bob', np.eye(3).reshape(-1),
                                   [0.0] * 12, 640, 480)
    mount = mount_from_angles(yaw_deg, -10.0, 1.2)
    side = mount.side
    centre = 0.8 * mount.rotation[0, 2] / abs(mount.rotation[1, 2])  # where the axis meets it
    leaves = np.array([[centre + x, side * 0.8, z] for x in (-0.35, 0.0, 0.3)
                       for z in (-0.25, 0.15)])
    optical = robot_to_optical(mount, leaves)
    pixels, _ = cv2.projectPoints(optical.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), k, d)
    pixels = pixels.reshape(-1, 2)
    assert (pixels[:, 0] > 0).all() and (pixels[:, 0] < 640).all()
    points, valid, _ = canopy_points(pixel_rays(model, pixels), mount, 0.8)
    assert valid.all()
    np.testing.assert_allclose(points, leaves, atol=TOLERANCE_M)
    # without the distortion the edge leaves would be off by more than the tolerance
    naive = camera_model_from_info(k.reshape(-1), [0.0] * 5, 'plumb_bob',
                                   np.eye(3).reshape(-1), [0.0] * 12, 640, 480)
    wrong, _, _ = canopy_points(pixel_rays(naive, pixels), mount, 0.8)
    assert np.abs(wrong - leaves).max() > TOLERANCE_M


def test_an_equidistant_fisheye_places_known_leaves_within_2_cm():
    k = np.array([[420.0, 0, 640.0], [0, 420.0, 400.0], [0, 0, 1]])
    d = np.array([0.05, -0.01, 0.002, -0.0005])
    model = camera_model_from_info(k.reshape(-1), d, 'equidistant', np.eye(3).reshape(-1),
                                   [0.0] * 12, 1280, 800)
    mount = mount_from_angles(-90.0, 0.0, 1.0)
    leaves = np.array([[x, -0.6, z] for x in (-0.9, -0.3, 0.5, 1.0) for z in (-0.3, 0.2)])
    optical = robot_to_optical(mount, leaves)
    pixels, _ = cv2.fisheye.projectPoints(optical.reshape(-1, 1, 3), np.zeros(3), np.zeros(3),
                                          k, d)
    points, valid, _ = canopy_points(pixel_rays(model, pixels.reshape(-1, 2)), mount, 0.6)
    assert valid.all()
    np.testing.assert_allclose(points, leaves, atol=TOLERANCE_M)


def test_binning_and_roi_map_published_pixels_to_the_full_sensor():
    # K of the full 1280x960 sensor; the camera publishes a 1000x800 window at (100, 60),
    # binned 2x2: a 500x400 image. A published pixel (u, v) is full pixel (2u+100, 2v+60).
    k = np.array([[900.0, 0, 639.5], [0, 900.0, 479.5], [0, 0, 1]])
    model = camera_model_from_info(k.reshape(-1), [0.0] * 5, 'plumb_bob',
                                   np.eye(3).reshape(-1), [0.0] * 12, 1280, 960, 2, 2,
                                   (100, 60, 1000, 800))
    assert (model.width_px, model.height_px) == (500, 400)
    mount = mount_from_angles(90.0, 0.0, 1.0)
    leaves = np.array([[-0.2, 1.0, 0.1], [0.25, 1.0, -0.15]])
    full = (robot_to_optical(mount, leaves) @ k.T)
    full = full[:, :2] / full[:, 2:]
    published = (full - [100, 60]) / 2.0
    points, valid, _ = canopy_points(pixel_rays(model, published), mount, 1.0)
    assert valid.all()
    np.testing.assert_allclose(points, leaves, atol=TOLERANCE_M)
    # reading the published pixels as full-resolution ones would misplace them
    whole = camera_model_from_info(k.reshape(-1), [0.0] * 5, 'plumb_bob',
                                   np.eye(3).reshape(-1), [0.0] * 12, 1280, 960)
    wrong, _, _ = canopy_points(pixel_rays(whole, published), mount, 1.0)
    assert np.abs(wrong - leaves).max() > 0.1


def test_a_rectified_image_uses_p_and_turns_back_by_r():
    # Stereo-rectified left camera: R rotates the camera frame by 3 deg about y.
    angle = math.radians(3.0)
    r = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                  [-math.sin(angle), 0, math.cos(angle)]])
    p = np.array([[700.0, 0, 330.0, 0], [0, 700.0, 250.0, 0], [0, 0, 1, 0]])
    k = [500.0, 0, 320, 0, 500.0, 240, 0, 0, 1]
    model = camera_model_from_info(k, [0.1, 0.0, 0, 0, 0], 'plumb_bob', r.reshape(-1),
                                   p.reshape(-1), 640, 480, rectified=True)
    mount = mount_from_angles(90.0, 0.0, 1.0)
    leaves = np.array([[-0.3, 0.9, 0.0], [0.2, 0.9, 0.2]])
    rectified = robot_to_optical(mount, leaves) @ r.T @ p[:, :3].T
    pixels = rectified[:, :2] / rectified[:, 2:]
    points, valid, _ = canopy_points(pixel_rays(model, pixels), mount, 0.9)
    assert valid.all()
    np.testing.assert_allclose(points, leaves, atol=TOLERANCE_M)


def test_uncalibrated_camera_info_and_unknown_distortion():
    assert camera_model_from_info([0.0] * 9, [], '', [0.0] * 9, [0.0] * 12, 640, 480) is None
    with pytest.raises(CameraGeometryError, match='camera_rectified'):
        camera_model_from_info([500.0, 0, 320, 0, 500.0, 240, 0, 0, 1], [0.1, 0.2],
                               'kannala_brandt_weird', [0.0] * 9, [0.0] * 12, 640, 480)


def test_the_hfov_fallback_spans_the_field_of_view_across_the_image():
    model = camera_model_from_hfov(1280, 720, 90.0)
    rays = pixel_rays(model, np.array([[-0.5, 359.5], [1279.5, 359.5]]))  # the outer edges
    angles = np.degrees(np.arctan2(rays[:, 0], rays[:, 2]))
    np.testing.assert_allclose(angles, [-45.0, 45.0], atol=1e-6)


def test_a_depth_image_gives_the_distance_per_tile():
    model = pinhole()
    mount = mount_from_angles(90.0, 0.0, 1.0)
    rays = pixel_rays(model, np.array([[0.0, 300.0], [500.0, 300.0], [750.0, 300.0]]))
    points, valid, _ = depth_points(rays, np.array([2.0, 0.0, 1.5]), mount)
    assert list(valid) == [True, False, True]
    np.testing.assert_allclose(points[0], [-2.0, 2.0, 0.0], atol=TOLERANCE_M)  # z = 2 m at 45 deg
    np.testing.assert_allclose(points[2], [0.75, 1.5, 0.0], atol=TOLERANCE_M)


def test_a_tf_quaternion_gives_the_same_mount_as_the_angles():
    # TF gives base_link -> camera_optical_frame as a quaternion: the same rotation as
    # the angles (looking left, 20 deg down) must come out of it.
    mount = mount_from_angles(90.0, -20.0, 1.1)
    matrix = mount.rotation
    w = math.sqrt(1.0 + np.trace(matrix)) / 2.0
    x = (matrix[2, 1] - matrix[1, 2]) / (4 * w)
    y = (matrix[0, 2] - matrix[2, 0]) / (4 * w)
    z = (matrix[1, 0] - matrix[0, 1]) / (4 * w)
    np.testing.assert_allclose(mount_from_quaternion(x, y, z, w, 1.1).rotation, matrix,
                               atol=1e-9)
    with pytest.raises(CameraGeometryError):
        mount_from_quaternion(0.0, 0.0, 0.0, 0.0, 1.0)


def test_the_covariance_grows_with_heading_uncertainty_times_range_and_distance():
    gps = np.diag([0.02 ** 2, 0.02 ** 2, 0.04 ** 2])
    sigma_heading = math.radians(2.0)
    # a leaf 1 m north of the camera, ray straight north: heading error moves it east,
    # a canopy-distance error moves it north
    covariance = leaf_covariance_enu(gps, np.array([0.0, 1.0, 0.0]), sigma_heading, 0.1, 1.0,
                                     0.0)
    assert covariance[0, 0] == pytest.approx(0.02 ** 2 + sigma_heading ** 2, rel=1e-9)
    assert covariance[1, 1] == pytest.approx(0.02 ** 2 + 0.1 ** 2, rel=1e-9)
    far = leaf_covariance_enu(gps, np.array([0.0, 3.0, 0.0]), sigma_heading, 0.1, 3.0, 0.0)
    assert far[0, 0] == pytest.approx(0.02 ** 2 + (3 * sigma_heading) ** 2, rel=1e-9)
    # a tile 0.3 m wide on the canopy: the lesion is anywhere in it (0.3^2 / 12 across)
    tiled = leaf_covariance_enu(np.zeros((3, 3)), np.array([0.0, 1.0, 0.0]), 0.0, 0.0, 1.0,
                                0.3)
    assert tiled[0, 0] == pytest.approx(0.3 ** 2 / 12) and tiled[1, 1] == pytest.approx(0.0)
