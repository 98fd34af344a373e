from __future__ import annotations

from legato.kernel.clock import Clock
from legato.trading.instruments import Instrument
from legato.trading.paper_venue import PaperVenue
from legato.trading.venue import Venue


def test_the_paper_venue_satisfies_the_venue_protocol(perp: Instrument, clock: Clock) -> None:
    assert isinstance(PaperVenue([perp], clock=clock), Venue)


def test_something_without_the_venue_methods_is_not_a_venue() -> None:
    assert not isinstance(object(), Venue)
