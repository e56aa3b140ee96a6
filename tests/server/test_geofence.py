"""Geofence arithmetic: distances, circles, polygons and the polygons refused."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.errors import ApiError
from server.handlers import geofence
from storage.attendance import Circle, Point, Site

SQUARE: tuple[Point, ...] = ((-6.30, 106.70), (-6.30, 106.71), (-6.31, 106.71), (-6.31, 106.70))


def site(name: str, circle: Circle | None = None, polygon: tuple[Point, ...] | None = None) -> Site:
    return Site(
        uuid.uuid4(), uuid.uuid4(), None, name, circle, polygon, uuid.uuid4(), datetime.now(UTC)
    )


def test_haversine_matches_known_distances() -> None:
    # one degree of latitude on the mean sphere, and a quarter of the equator
    assert geofence.haversine_m((0, 0), (1, 0)) == pytest.approx(111_195, abs=1)
    assert geofence.haversine_m((0, 0), (0, 90)) == pytest.approx(math.pi / 2 * 6_371_008.8)
    assert geofence.haversine_m((10, 179.9999), (10, -179.9999)) < 25  # across the antimeridian


def test_circle_boundary() -> None:
    centre = (-6.12, 106.99)
    ring = Circle(*centre, 1000)
    north = 1000 / geofence.EARTH_RADIUS_M * 180 / math.pi
    assert geofence.in_circle((centre[0] + north * 0.999, centre[1]), ring)
    assert not geofence.in_circle((centre[0] + north * 1.001, centre[1]), ring)


def test_polygon_inside_and_outside() -> None:
    assert geofence.in_polygon((-6.305, 106.705), SQUARE)
    assert not geofence.in_polygon((-6.295, 106.705), SQUARE)
    assert not geofence.in_polygon((-6.305, 106.715), SQUARE)
    assert not geofence.in_polygon((6.305, -73.295), SQUARE)  # the other side of the world
    # an L shape: its notch is outside
    ell = ((0, 0), (0, 0.002), (0.001, 0.002), (0.001, 0.001), (0.002, 0.001), (0.002, 0))
    assert geofence.polygon_problem(ell) is None
    assert geofence.in_polygon((0.0015, 0.0005), ell)
    assert not geofence.in_polygon((0.0015, 0.0015), ell)


def test_polygon_across_the_antimeridian() -> None:
    fiji = ((-17.0, 179.999), (-17.0, -179.999), (-17.001, -179.999), (-17.001, 179.999))
    assert geofence.polygon_problem(fiji) is None
    assert geofence.in_polygon((-17.0005, 180.0), fiji)
    assert geofence.in_polygon((-17.0005, -179.9995), fiji)
    assert not geofence.in_polygon((-17.0005, 179.99), fiji)


@pytest.mark.parametrize(
    ("vertices", "problem"),
    [
        (SQUARE[:2], "vertices"),
        ((*SQUARE, SQUARE[0]), "differ"),
        (((0, 0), (0, 0.001), (0, 0.002)), "area"),
        (((0, 0), (0.002, 0.002), (0, 0.002), (0.002, 0)), "area"),  # symmetric bow tie
        (((0, 0), (0.003, 0.002), (0, 0.002), (0.002, 0)), "cross"),  # lopsided bow tie
        (((0, 0), (0, 0.002), (0.001, 0.001), (0, 0.001)), "fold"),  # a spike back along an edge
        (((0, 0), (0, 2), (1, 1)), "km"),
    ],
)
def test_broken_polygons_are_refused(vertices: tuple[Point, ...], problem: str) -> None:
    found = geofence.polygon_problem(vertices)
    assert found is not None and problem in found


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 90.5, "1", True, None, [1.0]])
def test_a_bad_latitude_is_named_not_repeated(value: object) -> None:
    with pytest.raises(ApiError) as refused:
        geofence.point(value, 106.9)
    assert refused.value.message == "lat must be a number in -90..90"


def test_the_first_site_by_order_wins() -> None:
    big = site("Campus", Circle(-6.12, 106.99, 5000))
    small = site("Building", Circle(-6.12, 106.99, 100))
    assert geofence.site_at((-6.12, 106.99), [small, big]) is small
    assert geofence.site_at((-6.14, 106.99), [small, big]) is big
    assert geofence.site_at((-7.0, 106.99), [small, big]) is None
    assert geofence.site_at((-6.305, 106.705), [small, site("W", polygon=SQUARE)]) is not None


@given(  # at least ~1 mm from the edges, where rounding may decide either way
    lat=st.floats(-6.31 + 1e-8, -6.30 - 1e-8),
    lon=st.floats(106.70 + 1e-8, 106.71 - 1e-8),
)
def test_every_point_inside_the_square_is_inside(lat: float, lon: float) -> None:
    assert geofence.in_polygon((lat, lon), SQUARE)
