"""From potentiometers to watts: the ADC, its calibration and, off a Pi, the fake's driver.

With `--adc fake` a power profile sets the emulated MCP3008's input voltages, and the
meter then reads them back through gpiozero like real hardware: the whole path from SPI
bits to W is exercised, only the potentiometers are simulated.
"""

from __future__ import annotations

from broker.clock import wall_ms
from edge.adc import open_adc
from edge.config import MeterConfig
from edge.sampling import Calibration, PowerProfile, Sense


def open_sensing(kind: str, config: MeterConfig, profile: PowerProfile | None, origin_ms: int | None = None) -> Sense:
    """The meter's sense(elapsed_ms) -> (W in, W out). With the fake ADC, the profile's time 0 is
    the meter's start, or with `origin_ms` that wall-clock time (profile time 0 before it), so
    that several meters started apart follow one shared schedule, as `spb-deploy demo --day`'s
    street does, interval by interval."""
    adc = open_adc(kind, config.import_channel, config.export_channel, config.vref)
    cal_in = Calibration(config.import_full_w, config.dead_band_w)
    cal_out = Calibration(config.export_full_w, config.dead_band_w)
    profile = profile or PowerProfile.parse("0")  # what the fake ADC's pots are set to
    if kind == "fake":
        watts = [w for _, w in profile.steps]
        if max(watts) > cal_in.full_scale_w or -min(watts) > cal_out.full_scale_w:
            adc.close()
            raise ValueError(
                f"the power profile goes beyond the pots' full scale "
                f"(import {cal_in.full_scale_w} W, export {cal_out.full_scale_w} W in config.toml)"
            )

    def sense(elapsed_ms: int) -> tuple[int, int]:
        if adc.fake is not None:
            if origin_ms is not None:
                elapsed_ms = max(0, wall_ms() - origin_ms)
            w_in, w_out = profile.at(elapsed_ms)
            adc.fake.set_volts(config.import_channel, cal_in.value_for(w_in) * config.vref)
            adc.fake.set_volts(config.export_channel, cal_out.value_for(w_out) * config.vref)
        v_in, v_out = adc.read()
        return cal_in.watts(v_in), cal_out.watts(v_out)

    return sense
