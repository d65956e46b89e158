"""The clearing rule's worked example, for the tests of ledger.clearing and of `spb-ledger
clear`: a book in its JSON form (in no particular order) and the lines it clears to.

green: bid 01 (10/Wh) against the solar ask 10 (5/Wh): 30 Wh at floor(15/2) = 7. open: bid
02 (8) takes the grid's 30 Wh at 4 and 20 of the solar's 70 left at 5, bid 03 (5) the
solar's next 40 at 5; the last pair is 5 and 5, so 5. The fossil ask at 7 is never reached:
cheaper Wh sufficed.
"""

from __future__ import annotations

EXAMPLE_BOOK = {
    "bids": [
        {"id": "02", "wh": 50, "price": 8, "green": False},
        {"id": "01", "wh": 30, "price": 10, "green": True},
        {"id": "03", "wh": 40, "price": 5, "green": False},
    ],
    "asks": [
        {"id": "12", "wh": 50, "price": 7, "source": "fossil"},
        {"id": "10", "wh": 100, "price": 5, "source": "solar"},
        {"id": "11", "wh": 30, "price": 4, "source": "grid"},
    ],
}
EXAMPLE_LINES = [
    "product green price 7 wh 30",
    "product open price 5 wh 90",
    "fill green 01 10 30 210",
    "fill open 02 11 30 150",
    "fill open 02 10 20 100",
    "fill open 03 10 40 200",
]
