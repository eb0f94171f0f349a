"""A tiny geohash encoder (Niemeyer 2008): the region key of frames outside every named region."""

from __future__ import annotations

from avminer.errors import ScoringError

_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def encode(lat: float, lon: float, precision: int = 5) -> str:
    """Geohash of a point: ``precision`` base-32 characters, longitude bit first.

    Precision 4 is a cell of about 39 x 20 km, 5 about 4.9 x 4.9 km.

    Raises:
        ScoringError: latitude/longitude out of range or precision < 1.
    """
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ScoringError(f"GPS fix out of range: lat {lat}, lon {lon}")
    if precision < 1:
        raise ScoringError(f"geohash precision must be >= 1, got {precision}")
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    chars: list[str] = []
    bits, value, even = 0, 0, True
    while len(chars) < precision:
        if even:  # even bits refine longitude
            mid = (lon_lo + lon_hi) / 2
            value = value * 2 + (lon >= mid)
            lon_lo, lon_hi = (mid, lon_hi) if lon >= mid else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            value = value * 2 + (lat >= mid)
            lat_lo, lat_hi = (mid, lat_hi) if lat >= mid else (lat_lo, mid)
        even = not even
        bits += 1
        if bits == 5:
            chars.append(_BASE32[value])
            bits, value = 0, 0
    return "".join(chars)


def decode_bounds(code: str) -> tuple[float, float, float, float]:
    """``(lat_min, lon_min, lat_max, lon_max)`` of a geohash cell (for tests and display)."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    even = True
    for ch in code:
        idx = _BASE32.find(ch)
        if idx < 0:
            raise ScoringError(f"{code!r} is not a geohash (bad character {ch!r})")
        for shift in range(4, -1, -1):
            bit = (idx >> shift) & 1
            if even:
                mid = (lon_lo + lon_hi) / 2
                lon_lo, lon_hi = (mid, lon_hi) if bit else (lon_lo, mid)
            else:
                mid = (lat_lo + lat_hi) / 2
                lat_lo, lat_hi = (mid, lat_hi) if bit else (lat_lo, mid)
            even = not even
    return lat_lo, lon_lo, lat_hi, lon_hi
