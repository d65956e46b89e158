"""edge.sampling (calibration, integration, power profiles) and edge.adc (the MCP3008 and its fake)."""

from __future__ import annotations

import gc
import math
import warnings

import pytest
from gpiozero import MCP3008, Device
from gpiozero.pins.mock import MockFactory
from hypothesis import given
from hypothesis import strategies as st

from edge.adc import FakeMCP3008, open_adc
from edge.energy import Totals
from edge.sampling import Calibration, Integrator, PowerProfile


def code(volts: float, vref: float = 3.3) -> int:
    """The MCP3008's 10-bit code for `volts` (datasheet: floor(1024 · Vin / Vref), clamped)."""
    return min(math.floor(1024 * min(max(volts, 0.0), vref) / vref), 1023)


def value(raw: int) -> float:
    """gpiozero's MCP3008.value for a code, bit for bit: ≈ (2·code + 1) / 2047, so code 0 reads 1/2047."""
    return 2 * (raw + 1024) / 2047 - 1


@pytest.fixture(autouse=True)
def global_pin_factory():
    """The fake ADC sets gpiozero's process-wide pin factory; put back whatever was there."""
    saved = Device.pin_factory
    yield
    Device.pin_factory = saved


@pytest.fixture
def closing():
    """closing(x): close x after the test. gpiozero shares an SPI interface per pin pair across
    factories, so a device left open would capture the next test's reads; and a closed one
    unregisters the live one when it is finally collected, so earlier tests' are collected now."""
    gc.collect()
    opened = []

    def close_later(thing):
        opened.append(thing)
        return thing

    yield close_later
    for thing in reversed(opened):
        thing.close()


@pytest.fixture
def chip(closing):
    """(fake, device(channel, **kw)): a FakeMCP3008 on a MockFactory and gpiozero MCP3008s reading it."""
    factory = MockFactory()
    Device.pin_factory = factory
    fake = closing(FakeMCP3008(factory))

    def device(channel: int, **kw) -> MCP3008:
        return closing(MCP3008(channel=channel, pin_factory=factory, **kw))

    return fake, device


# ---- Calibration ------------------------------------------------------------------------


def test_dead_band_reads_zero_and_its_edge_reads_itself():
    """A pot resting near zero reads noise: below the dead band is 0 W, the band's edge is real power."""
    cal = Calibration(full_scale_w=3000, dead_band_w=20)
    assert cal.watts(cal.value_for(19)) == 0
    assert cal.watts(cal.value_for(20)) == 20
    assert cal.watts(value(0)) == 0  # the MCP3008's lowest reading is 1/2047 (≈ 1.5 W here), not 0


def test_readings_clamp_to_the_pots_range():
    """Readings past either end (noise, a differential channel) give 0 W or full scale, never more."""
    cal = Calibration(full_scale_w=3000, dead_band_w=0)
    assert cal.watts(-0.2) == 0
    assert cal.watts(0.0) == 0
    assert cal.watts(1.0) == 3000
    assert cal.watts(1.3) == 3000
    assert isinstance(cal.watts(0.123456), int)


@given(st.integers(1, 10**7).flatmap(lambda fs: st.tuples(st.just(fs), st.integers(0, fs), st.integers(0, fs))))
def test_value_for_round_trips_through_watts(case):
    """Every whole W of the range reads back exactly; inside the dead band it reads 0."""
    full_scale_w, dead_band_w, w = case
    cal = Calibration(full_scale_w, dead_band_w)
    assert 0.0 <= cal.value_for(w) <= 1.0
    assert cal.watts(cal.value_for(w)) == (w if w >= dead_band_w else 0)
    assert Calibration(full_scale_w, 0).watts(cal.value_for(w)) == w


@pytest.mark.parametrize("full_scale_w, dead_band_w", [(0, 0), (-100, 0), (100, -1), (100, 101)])
def test_bad_calibration_raises(full_scale_w, dead_band_w):
    with pytest.raises(ValueError):
        Calibration(full_scale_w, dead_band_w)


@pytest.mark.parametrize("w", [-1, 3001])
def test_value_for_outside_the_range_raises(w):
    """The pot cannot make more than full scale: a profile asking for it is refused, not clipped."""
    with pytest.raises(ValueError):
        Calibration(3000, 0).value_for(w)


# ---- Integrator -------------------------------------------------------------------------


def test_left_riemann_sum_is_exact():
    """Each sample's power holds until the next one; the first sample only starts the clock."""
    integ = Integrator(Totals(5, 7), max_gap_ms=2000)
    assert integ.sample(1500, 0, 10_000) == Totals(5, 7)
    assert integ.sample(0, 800, 10_100) == Totals(5 + 1500 * 100, 7)
    assert integ.sample(10, 20, 10_350) == Totals(5 + 150_000, 7 + 800 * 250)
    assert integ.sample(999, 999, 10_350) == Totals(150_005, 200_007)  # same instant: nothing held
    assert integ.sample(0, 0, 12_350) == Totals(150_005 + 999 * 2000, 200_007 + 999 * 2000)
    assert integ.totals == Totals(2_148_005, 2_198_007)
    assert integ.unsampled_ms == 0


def test_a_gap_is_integrated_up_to_max_gap_only():
    """A stalled loop must not invent energy from a stale reading: the rest is counted as unsampled."""
    integ = Integrator(Totals(), max_gap_ms=2000)
    integ.sample(1000, 0, 0)
    assert integ.sample(0, 500, 5000) == Totals(1000 * 2000, 0)
    assert integ.unsampled_ms == 3000
    assert integ.sample(0, 0, 5100) == Totals(2_000_000, 500 * 100)
    integ.sample(0, 0, 7100)  # exactly max_gap_ms is a normal interval
    assert integ.unsampled_ms == 3000


def test_time_going_backwards_raises_and_changes_nothing():
    integ = Integrator(Totals(), max_gap_ms=2000)
    integ.sample(100, 0, 1000)
    with pytest.raises(ValueError, match="backwards"):
        integ.sample(100, 0, 999)
    assert integ.totals == Totals()
    assert integ.sample(0, 0, 1010) == Totals(1000, 0)  # still integrating from the last good sample


@pytest.mark.parametrize("w_in, w_out", [(-1, 0), (0, -1)])
def test_negative_power_raises_at_once(w_in, w_out):
    """Refused when sampled, not an interval later when it would be integrated."""
    integ = Integrator(Totals(), max_gap_ms=2000)
    with pytest.raises(ValueError):
        integ.sample(w_in, w_out, 0)


@pytest.mark.parametrize("max_gap_ms", [0, -1])
def test_max_gap_must_be_positive(max_gap_ms):
    with pytest.raises(ValueError):
        Integrator(Totals(), max_gap_ms)


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 10_000), st.integers(0, 10_000)), max_size=50))
def test_totals_only_increase_and_every_ms_is_held_or_unsampled(samples):
    """Totals never decrease; integrated time plus unsampled time is exactly the time covered."""
    integ = Integrator(Totals(3, 4), max_gap_ms=2000)
    clock = Integrator(Totals(), max_gap_ms=2000)  # 1 W in: its wms_in is the integrated time
    t = 1_000_000
    before = integ.totals
    for dt, w_in, w_out in samples:
        t += dt
        after = integ.sample(w_in, w_out, t)
        clock.sample(1, 0, t)
        assert after.wms_in >= before.wms_in and after.wms_out >= before.wms_out
        before = after
    elapsed = sum(dt for dt, _, _ in samples[1:])
    assert clock.totals.wms_in + clock.unsampled_ms == elapsed


# ---- PowerProfile -----------------------------------------------------------------------


@pytest.mark.parametrize("text, w_in, w_out", [("1500", 1500, 0), ("-800", 0, 800), (" 0 ", 0, 0), ("+25", 25, 0)])
def test_a_constant_profile_holds_forever(text, w_in, w_out):
    profile = PowerProfile.parse(text)
    assert profile.at(0) == profile.at(10**12) == (w_in, w_out)


def test_steps_switch_at_their_second_and_the_last_holds():
    """Positive W feed the import channel, negative W the export channel."""
    profile = PowerProfile.parse("0:100, 10:-200,30:0")
    assert profile.steps == ((0, 100), (10, -200), (30, 0))
    assert [profile.at(ms) for ms in (0, 9_999, 10_000, 29_999, 30_000, 10**12)] == [
        (100, 0),
        (100, 0),
        (0, 200),
        (0, 200),
        (0, 0),
        (0, 0),
    ]
    assert PowerProfile.parse("0:5").at(99_000) == (5, 0)


def test_a_time_before_the_start_raises():
    with pytest.raises(ValueError):
        PowerProfile.parse("100").at(-1)


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "whole number of W"),
        ("abc", "'abc' in power profile 'abc' is not a whole number of W"),
        ("1.5", "whole number of W"),
        ("0:1.5", "whole number of W"),
        ("0.5:100", "whole number of seconds"),
        ("5:100", "first step must start at 0 s"),
        ("-5:100", "first step must start at 0 s"),
        ("0:100,0:200", "increasing order: 0 s after 0 s"),
        ("0:100,20:1,10:2", "increasing order: 10 s after 20 s"),
        ("0:100,200", "step '200' in power profile '0:100,200' is not S:W"),
        ("0:100,", "is not S:W"),
        ("0:1:2", "'1:2' in power profile"),
    ],
)
def test_bad_profiles_say_what_is_wrong(text, says):
    """Messages name the offending piece and the profile, so a command-line user can fix it."""
    with pytest.raises(ValueError, match="power profile") as err:
        PowerProfile.parse(text)
    assert says in str(err.value)


# ---- FakeMCP3008 through gpiozero -------------------------------------------------------


@pytest.mark.parametrize("volts, raw", [(0.0, 0), (1.65, 512), (3.3, 1023), (3.296, 1022), (-1.0, 0), (5.0, 1023)])
def test_gpiozero_reads_the_exact_10_bit_code(chip, volts, raw):
    """gpiozero's own MCP3008 code talks SPI bit by bit to the fake and decodes its answer."""
    fake, device = chip
    adc = device(3)
    fake.set_volts(3, volts)
    assert adc.raw_value == raw
    assert adc.value == value(raw)
    assert fake.reads == 2


def test_channels_are_independent(chip):
    fake, device = chip
    volts = [0.0, 0.4, 0.8, 1.2, 1.65, 2.0, 2.9, 3.3]
    for ch, v in enumerate(volts):
        fake.set_volts(ch, v)
    devices = [device(ch) for ch in range(8)]
    assert [d.raw_value for d in devices] == [code(v) for v in volts]
    fake.set_volts(5, 0.0)
    assert [d.raw_value for d in devices] == [code(v) for v in volts[:5]] + [0] + [code(v) for v in volts[6:]]
    assert fake.reads == 16


def test_differential_mode_reads_the_pair_clamped_at_zero(chip):
    """CH0 relative to CH1 and the reverse, as the datasheet pairs them; negative reads 0."""
    fake, device = chip
    fake.set_volts(0, 2.0)
    fake.set_volts(1, 0.5)
    assert device(0, differential=True).raw_value == code(1.5)
    assert device(1, differential=True).raw_value == 0


@pytest.mark.parametrize("channel", [-1, 8])
def test_set_volts_on_a_missing_channel_raises(chip, channel):
    with pytest.raises(ValueError):
        chip[0].set_volts(channel, 1.0)


# ---- open_adc ---------------------------------------------------------------------------


def test_open_fake_reads_what_the_calibration_asked_for(closing):
    """The fake-power path: W → value_for → volts on the fake → gpiozero → watts, to one 10-bit step."""
    cal = Calibration(full_scale_w=3000, dead_band_w=20)
    adc = closing(open_adc("fake", import_ch=2, export_ch=5))
    fake = adc.fake
    for ch in range(8):
        fake.set_volts(ch, 3.0)  # the other channels must not be read
    for w_in, w_out in [(0, 0), (1500, 0), (0, 2999), (3000, 3000), (17, 640)]:
        v_in, v_out = cal.value_for(w_in) * fake.vref, cal.value_for(w_out) * fake.vref
        fake.set_volts(2, v_in)
        fake.set_volts(5, v_out)
        reads = fake.reads
        assert adc.read() == (value(code(v_in)), value(code(v_out)))
        assert fake.reads == reads + 2
        for w, got in zip((w_in, w_out), map(cal.watts, adc.read()), strict=True):
            expected = w if w >= cal.dead_band_w else 0
            assert abs(got - expected) <= 3000 / 1023


def test_open_fake_attaches_quietly_and_sets_the_global_factory(closing):
    """Set before the devices, the global factory spares gpiozero its fallback search: no warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adc = closing(open_adc("fake", 0, 1))
    assert adc.fake in adc.fake.clock_pin.spi_devices
    assert isinstance(Device.pin_factory, MockFactory)
    adc.fake.set_volts(1, 3.3)
    assert adc.read() == (value(0), 1.0)


@pytest.mark.parametrize("kind, import_ch, export_ch", [("spi", 0, 1), ("fake", 0, 0), ("fake", 0, 8), ("fake", -1, 1)])
def test_open_adc_refuses_bad_arguments_before_touching_gpiozero(kind, import_ch, export_ch):
    before = Device.pin_factory
    with pytest.raises(ValueError):
        open_adc(kind, import_ch, export_ch)
    assert Device.pin_factory is before


def test_a_device_on_other_pins_is_detected_not_read_as_zero(closing):
    """An MCP3008 built without the fake reads 0 V without complaint; check_attached refuses it."""
    fake = closing(FakeMCP3008(MockFactory()))
    fake.set_volts(0, 3.3)
    Device.pin_factory = MockFactory()
    stray = closing(MCP3008(channel=0, pin_factory=Device.pin_factory))
    assert stray.raw_value == 0  # the silent failure being guarded against
    with pytest.raises(RuntimeError, match="does not talk to this FakeMCP3008"):
        fake.check_attached(stray)


def test_a_closed_fake_is_detected(closing):
    adc = closing(open_adc("fake", 0, 1))
    adc.fake.close()
    with pytest.raises(RuntimeError, match="not on its SPI clock pin"):
        adc.fake.check_attached(adc._import)


def test_a_second_fake_adc_in_one_process_raises(closing):
    """gpiozero shares the SPI interface by pin numbers across factories: the second fake would
    never see a clock. open_adc says so, and the first keeps reading its own fake."""
    first = open_adc("fake", 0, 1)
    first.fake.set_volts(0, 3.3)
    with pytest.raises(RuntimeError, match="another fake ADC"):
        open_adc("fake", 0, 1)
    assert first.read() == (1.0, value(0))
    first.close()
    second = closing(open_adc("fake", 0, 1))
    second.fake.set_volts(1, 3.3)
    assert second.read() == (value(0), 1.0)
