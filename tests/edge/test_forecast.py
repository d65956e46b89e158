"""The forecaster: a blend of the last intervals and the same interval yesterday, integers only,
truncated toward zero, its history bounded and pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.forecast import RECENT, History, forecast, intervals_per_day, record

DAY = intervals_per_day(300)  # 288


def _history(rows):
    history = History()
    for k, wh in rows:
        history = record(history, k, wh, 300)
    return history


def test_no_history_forecasts_nothing():
    assert forecast(History(), 1000, 300) == 0


def test_recent_only_is_their_mean_truncated_toward_zero():
    assert forecast(_history([(997, 10), (998, 11), (999, 12)]), 1000, 300) == 11
    assert forecast(_history([(998, -10), (999, -11)]), 1000, 300) == -10  # -10.5: toward zero
    assert forecast(_history([(998, 10), (999, 11)]), 1000, 300) == 10


def test_intervals_older_than_the_window_do_not_count_as_recent():
    assert forecast(_history([(996, 1000), (999, 10)]), 1000, 300) == 10


def test_yesterday_only_is_yesterdays_value():
    assert forecast(_history([(1000 - DAY, -42)]), 1000, 300) == -42


def test_both_are_blended_half_and_half():
    rows = [(1000 - DAY, 100), (997, 10), (998, 20), (999, 30)]
    assert forecast(_history(rows), 1000, 300) == 60  # (20 + 100) / 2


def test_the_interval_itself_and_later_ones_are_not_used():
    assert forecast(_history([(1000, 500), (1001, 500)]), 1000, 300) == 0


def test_record_replaces_and_keeps_only_a_day_and_the_window():
    history = _history([(1, 5), (1, 7)])
    assert history.net == ((1, 7),)
    history = record(history, 1 + DAY + RECENT + 1, 3, 300)
    assert history.net == ((1 + DAY + RECENT + 1, 3),)


wh = st.integers(-100_000, 100_000)


@given(st.dictionaries(st.integers(0, 2 * DAY), wh, max_size=40), st.integers(0, 3 * DAY))
def test_the_forecast_lies_between_what_was_measured_and_zero(rows, k):
    history = _history(sorted(rows.items()))
    used = [v for kk, v in history.net if k - RECENT <= kk < k or kk == k - DAY]
    result = forecast(history, k, 300)
    assert isinstance(result, int)
    assert min([0, *used]) <= result <= max([0, *used])
    assert result == forecast(history, k, 300)  # deterministic


@given(st.lists(st.tuples(st.integers(0, 3 * DAY), wh), max_size=60))
def test_the_history_stays_bounded(rows):
    history = _history(sorted(rows))
    assert len(history.net) <= DAY + RECENT + 1
