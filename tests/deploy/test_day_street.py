"""The street of `demo --day`: its households' day of power, as the fake ADCs will play it."""

from __future__ import annotations

import pytest

from deploy import day_street
from deploy.day_ledger import imported_between
from edge.sampling import PowerProfile

N, S = 48, 3


def test_the_day_compresses_to_whole_times_and_each_interval_keeps_a_real_half_hours_wh():
    assert day_street.compression(N, S) == 600  # 86,400 s in 144 s
    assert [day_street.label(i, N) for i in (0, 1, 13, 47)] == ["00:00", "00:30", "06:30", "23:30"]
    assert [day_street.label(i, 24) for i in (0, 23)] == ["00:00", "23:00"]
    pv = day_street.STREET[0]
    noon = day_street.schedule(pv, N, S)[26]  # 13:00-13:30
    wh_per_interval = -noon * S // 3600
    real_half_hour = -day_street.net_w(pv, day_street.hour_of(26, N)) // 2
    assert abs(wh_per_interval - real_half_hour) <= 1


@pytest.mark.parametrize("home", day_street.STREET, ids=lambda h: h.meter)
def test_each_schedule_is_a_valid_profile_with_a_step_per_interval_within_its_pots(home):
    profile = PowerProfile.parse(day_street.profile_text(home, N, S))
    assert [start for start, _ in profile.steps] == [i * S for i in range(N + 1)]
    assert profile.steps[-1][1] == profile.steps[0][1]  # midnight again, held after the day
    assert max(abs(w) for _, w in profile.steps) * 5 // 4 <= day_street.full_scale_w(home, N, S)
    assert profile.at(5 * S * 1000 + 1) == profile.at(5 * S * 1000 + S * 1000 - 1)  # constant in an interval


def test_pv_houses_export_at_noon_and_import_at_night_consumers_peak_in_the_evening():
    hour = {h: i for i in range(N) for h in [day_street.hour_of(i, N)]}
    at = {round(h, 2): i for h, i in hour.items()}
    night, noon, evening = at[2.25], at[13.25], at[19.25]
    for home in day_street.STREET:
        w = day_street.schedule(home, N, S)
        if home.pv_w:
            assert w[night] > 0 > w[noon], home
        elif not home.wind_w:
            assert w[evening] > 3 * w[night] > 0, home
            assert not home.source  # a consumer has nothing to sell
        else:
            assert min(w) < 0 and home.source == "wind"  # the turbine exports for much of the day


def test_every_household_trades_by_itself_within_a_budget_and_the_tariff_is_above_every_price():
    for home in day_street.STREET:
        assert home.policy.mode == "auto"
        home.policy.check()
        assert home.policy.buy_max_price < day_street.TARIFF  # the market beats the grid for a buyer
        assert home.policy.sell_min_price <= home.policy.buy_max_price
        assert bool(home.source) == (home.pv_w > 0 or home.wind_w > 0)


def test_import_between_two_times_takes_the_last_reading_at_or_before_each():
    readings = [(1000, 10), (2000, 15), (3000, 40)]
    assert imported_between(readings, 1500, 3000) == 30
    assert imported_between(readings, 2000, 2999) == 0
    assert imported_between(readings, 500, 3000) is None  # nothing read before the start
    assert imported_between([], 0, 1) is None
