"""Geofences: is a position inside an attendance site? Pure functions, no I/O.

Positions are (lat, lon) in degrees (WGS 84, as phones report them).

- Circle: inside when the great-circle (haversine) distance from the centre, on a sphere of
  the Earth's mean radius, is at most the radius. The sphere is off from the ellipsoid by
  at most ~0.5 %: a few metres on a few hundred.
- Polygon: the vertices are joined by straight lines in (lat, lon) (equirectangular),
  longitudes taken relative to the first vertex so a site across the antimeridian works,
  and the position is tested by ray casting (even-odd). Straight lat/lon edges are not
  great circles; over a site no wider than MAX_POLYGON_SPAN_M the difference is well under
  a metre at ordinary latitudes. A position exactly on an edge may count either way.

Validation messages name the field and the rule, never the value given: a coordinate must
not end up in an error message (or a log line quoting one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from server.errors import invalid
from storage.attendance import Circle, Point, Site

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
MIN_RADIUS_M = 1.0
MAX_RADIUS_M = 50_000.0
MIN_VERTICES = 3
MAX_VERTICES = 100
MAX_POLYGON_SPAN_M = 100_000.0  # every vertex within this of the first
MIN_POLYGON_AREA_M2 = 1.0
MAX_ACCURACY_M = 100_000.0


def number(value: Any, field: str, low: float, high: float) -> float:
    """`value` as a float if it is a JSON number (not a boolean), finite, in [low, high];
    otherwise invalid_request "<field> must be a number in <low>..<high>"."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and low <= value <= high
    if not ok:
        raise invalid(f"{field} must be a number in {low:g}..{high:g}", field)
    return float(value)


def point(lat: Any, lon: Any, field: str = "") -> Point:
    """A position from JSON values; `field` prefixes the names in messages ("polygon.3.")."""
    return number(lat, f"{field}lat", -90, 90), number(lon, f"{field}lon", -180, 180)


def circle(lat: Any, lon: Any, radius_m: Any) -> Circle:
    centre = point(lat, lon, "circle.")
    return Circle(*centre, number(radius_m, "circle.radius_m", MIN_RADIUS_M, MAX_RADIUS_M))


def haversine_m(a: Point, b: Point) -> float:
    """Great-circle distance in metres."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _wrap(degrees: float) -> float:
    """A longitude difference in [-180, 180)."""
    return (degrees + 180.0) % 360.0 - 180.0


def _plane(origin: Point, p: Point) -> tuple[float, float]:
    """`p` in degrees east and north of `origin`, the east scaled to its length there (the
    scale changes no inside/outside answer; it makes areas and angles true)."""
    return _wrap(p[1] - origin[1]) * math.cos(math.radians(origin[0])), p[0] - origin[0]


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segments_meet(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float], d: tuple[float, float]
) -> bool:
    """Do segments ab and cd share any point (crossing, touching or overlapping)?"""
    d1, d2, d3, d4 = _cross(c, d, a), _cross(c, d, b), _cross(a, b, c), _cross(a, b, d)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (d1 == 0 and _on_segment(a, c, d))
        or (d2 == 0 and _on_segment(b, c, d))
        or (d3 == 0 and _on_segment(c, a, b))
        or (d4 == 0 and _on_segment(d, a, b))
    )


def polygon_problem(vertices: Sequence[Point]) -> str | None:
    """Why these vertices (in order, not closed) make no usable site, or None."""
    n = len(vertices)
    if not MIN_VERTICES <= n <= MAX_VERTICES:
        return f"a polygon has {MIN_VERTICES}..{MAX_VERTICES} vertices"
    if len(set(vertices)) != n:
        return "a polygon's vertices must all differ (do not repeat the first at the end)"
    origin = vertices[0]
    if any(haversine_m(origin, v) > MAX_POLYGON_SPAN_M for v in vertices):
        return f"a polygon must fit within {MAX_POLYGON_SPAN_M / 1000:g} km of its first vertex"
    flat = [_plane(origin, v) for v in vertices]
    twice_area = sum(
        flat[i][0] * flat[(i + 1) % n][1] - flat[(i + 1) % n][0] * flat[i][1] for i in range(n)
    )
    metres_per_degree = math.radians(EARTH_RADIUS_M)
    if abs(twice_area) / 2 * metres_per_degree**2 < MIN_POLYGON_AREA_M2:
        return "a polygon must enclose an area (its vertices are all on one line)"
    return _edges_problem(flat)


def _edges_problem(flat: list[tuple[float, float]]) -> str | None:
    """Why the closed outline through `flat` is no simple polygon, or None."""
    n = len(flat)
    for i in range(n):
        # the two edges at a vertex must not fold back over each other (a spike)
        here, before, after = flat[i], flat[i - 1], flat[(i + 1) % n]
        dot = (before[0] - here[0]) * (after[0] - here[0]) + (before[1] - here[1]) * (
            after[1] - here[1]
        )
        if _cross(here, before, after) == 0 and dot > 0:
            return "a polygon's edges must not fold back over each other"
    edges = [(flat[i], flat[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # neighbours through the closing edge
            if _segments_meet(*edges[i], *edges[j]):
                return "a polygon's edges must not cross or touch each other"
    return None


def polygon(vertices: Sequence[tuple[Any, Any]]) -> tuple[Point, ...]:
    """Validated polygon vertices from JSON values; invalid_request naming the problem."""
    if not MIN_VERTICES <= len(vertices) <= MAX_VERTICES:
        raise invalid(f"a polygon has {MIN_VERTICES}..{MAX_VERTICES} vertices", "polygon")
    points = tuple(point(lat, lon, f"polygon.{i}.") for i, (lat, lon) in enumerate(vertices))
    problem = polygon_problem(points)
    if problem is not None:
        raise invalid(problem, "polygon")
    return points


def in_circle(p: Point, c: Circle) -> bool:
    return haversine_m(p, (c.lat, c.lon)) <= c.radius_m


def in_polygon(p: Point, vertices: Sequence[Point]) -> bool:
    """Ray casting (even-odd) in the plane of the module doc."""
    origin = vertices[0]
    x, y = _plane(origin, p)
    flat = [_plane(origin, v) for v in vertices]
    inside = False
    j = len(flat) - 1
    for i in range(len(flat)):
        (xi, yi), (xj, yj) = flat[i], flat[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def contains(site: Site, p: Point) -> bool:
    if site.circle is not None:
        return in_circle(p, site.circle)
    assert site.polygon is not None
    return in_polygon(p, site.polygon)


def site_at(p: Point, sites: Sequence[Site]) -> Site | None:
    """The first of `sites` (they come by name) that contains `p`, or None."""
    return next((s for s in sites if contains(s, p)), None)
