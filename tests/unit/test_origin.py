"""Pure parts of origin confinement: cookie paths, Location, host labels."""

from __future__ import annotations

import pytest

from swarmpool.gateway.origin import (
    confine_location,
    confine_set_cookie,
    host_label,
    label_of,
    without_gateway_cookies,
)
from swarmpool.ids import new_instance_id

ID = "qhcyoczf5zhryhayztd3rzqzqu"  # fixed: parametrized ids must be the same in every xdist worker
P = f"/i/{ID}"


@pytest.mark.parametrize(("given", "strip", "expected"), [
    ("a=1; Path=/", False, f"a=1; Path={P}"),
    ("a=1; Path=/; Domain=.example.org; Secure", False, f"a=1; Path={P}; Secure"),
    (f"a=1; Path={P}/api", False, f"a=1; Path={P}/api"),
    (f"a=1; Path={P}x", False, f"a=1; Path={P}"),  # a neighbour's prefix is not inside ours
    ("a=1", False, "a=1"),
    ("a=1; Path=relative", False, f"a=1; Path={P}"),
    ("a=1; Path=/api/", True, f"a=1; Path={P}/api"),
    ("a=1; Path=/", True, f"a=1; Path={P}"),
    ("a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; PATH=/x", False, f"a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path={P}"),
])
def test_cookies_are_confined_to_the_prefix(given: str, strip: bool, expected: str) -> None:
    assert confine_set_cookie(given, ID, strip) == expected


@pytest.mark.parametrize(("given", "expected"), [
    ("/x?y=1#z", f"{P}/x?y=1#z"),
    (f"{P}/x", f"{P}/x"),
    ("http://gw:8080/x", f"http://gw:8080{P}/x"),
    ("http://GW:8080/x", f"http://GW:8080{P}/x"),
    ("http://gw:9999/x", "http://gw:9999/x"),
    ("https://other/x", "https://other/x"),
    ("//other/x", "//other/x"),
    ("x/y", "x/y"),
])
def test_location_goes_back_into_the_prefix(given: str, expected: str) -> None:
    assert confine_location(given, ID, "gw:8080") == expected


def test_gateway_cookies_are_removed() -> None:
    assert without_gateway_cookies("sp_browser=1; a=2;swarmpool-x=3 ; b=4") == "a=2; b=4"
    assert without_gateway_cookies("sp_browser=1") == ""


def test_host_labels_are_stable_one_way_and_matched_on_the_instance_domain() -> None:
    label = host_label(ID)
    assert label == host_label(ID) and label != host_label(new_instance_id())
    assert len(label) == 20 and ID[:6] not in label
    assert label_of(f"{label}.apps.example.org", "apps.example.org") == label
    assert label_of(f"{label}.apps.example.org:8443", "apps.example.org:8443") == label
    assert label_of(f"{label.upper()}.Apps.Example.Org.", "apps.example.org") == label
    assert label_of("apps.example.org", "apps.example.org") is None
    assert label_of(f"x.{label}.apps.example.org", "apps.example.org") is None
    assert label_of(f"{label}.evilapps.example.org", "apps.example.org") is None
    assert label_of("example.org", "apps.example.org") is None
