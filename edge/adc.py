"""The meter's ADC: an MCP3008 with the import pot on one channel and the export pot on another.

On a Pi gpiozero drives the real chip over hardware SPI. The fake runs the very same gpiozero
MCP3008 code, bit-banging SPI through mock pins to FakeMCP3008, so only the chip is simulated
(about 150 µs a read: fine at 10 Hz on two channels).
"""

from __future__ import annotations

import gc
import math

from gpiozero import MCP3008, Device
from gpiozero.pins.mock import MockFactory, MockSPIDevice

SPI0_CE0 = {"clock_pin": 11, "mosi_pin": 10, "miso_pin": 9, "select_pin": 8}  # BCM, gpiozero's defaults
BITS = 10


class FakeMCP3008(MockSPIDevice):
    """The chip's side of the MCP3008 protocol on SPI0 CE0, with each channel's volts set by hand.

    gpiozero clocks out leading zeros, a start bit, single/differential and three channel
    bits; the chip answers with a sampling bit, a null bit and the 10-bit code, MSB first.
    """

    rx_buf: list[int]  # the bits received so far, kept by MockSPIDevice

    def __init__(self, pin_factory: MockFactory, vref: float = 3.3):
        super().__init__(**SPI0_CE0, pin_factory=pin_factory)
        self.vref = vref
        self.volts = [0.0] * 8
        self.reads = 0  # conversions answered: proof that a device really talks to this chip
        self._state = "idle"
        self._single = True

    def set_volts(self, channel: int, volts: float) -> None:
        if not 0 <= channel < len(self.volts):
            raise ValueError(f"the MCP3008 has channels 0..{len(self.volts) - 1}, not {channel}")
        self.volts[channel] = float(volts)

    def on_start(self) -> None:
        super().on_start()
        self._state = "idle"
        # gpiozero's mock pins log every change in `states` and never forget: ~13 kB a sample,
        # hundreds of MB a day at 10 Hz. Nobody reads the history, so each transaction drops it.
        for pin in (self.clock_pin, self.mosi_pin, self.miso_pin, self.select_pin):
            pin.clear_states()

    def on_bit(self) -> None:
        if self._state == "idle":
            if self.rx_buf[-1]:
                self._state, self.rx_buf = "mode", []
        elif self._state == "mode":
            self._single = bool(self.rx_buf[-1])
            self._state, self.rx_buf = "channel", []
        elif self._state == "channel":
            if len(self.rx_buf) == 3:
                self._convert(self.rx_word())
                self._state = "result"
        elif not self.tx_buf:
            self._state, self.rx_buf = "idle", []

    def _convert(self, channel: int) -> None:
        """The datasheet's code, floor(1024 · Vin / Vref), with Vin clamped to the rails."""
        volts = self.volts[channel] if self._single else self.volts[channel] - self.volts[channel ^ 1]
        volts = min(max(volts, 0.0), self.vref)
        self.reads += 1
        self.tx_word(min(math.floor(2**BITS * volts / self.vref), 2**BITS - 1), BITS + 2)

    def check_attached(self, device: MCP3008) -> None:
        """Raise unless `device` really reads this chip; a detached fake would read 0 V, silently.

        gpiozero shares one SPI interface per pin pair across all pin factories, so a device
        can end up on another fake's pins (two fake ADCs open in one process) or on bare pins.
        """
        if self not in self.clock_pin.spi_devices:
            raise RuntimeError("FakeMCP3008 is not on its SPI clock pin (closed?): reads would be 0 V")
        reads = self.reads
        _ = device.raw_value  # reading it makes one conversion
        if self.reads != reads + 1:
            raise RuntimeError(
                f"MCP3008 channel {device.channel} does not talk to this FakeMCP3008 "
                f"(another fake ADC open in this process?): reads would be 0 V"
            )


class Adc:
    """The import and export channels, each read as gpiozero's 0..1 value (volts / Vref)."""

    def __init__(self, import_dev: MCP3008, export_dev: MCP3008, fake: FakeMCP3008 | None = None):
        self._import = import_dev
        self._export = export_dev
        self.fake = fake  # the simulated chip, for tests and the fake-power driver; None on a Pi

    def read(self) -> tuple[float, float]:
        return self._import.value, self._export.value

    def close(self) -> None:
        self._import.close()
        self._export.close()
        if self.fake is not None:
            self.fake.close()


def open_adc(kind: str, import_ch: int, export_ch: int, vref: float = 3.3) -> Adc:
    """`"mcp3008"`: the chip on SPI0 CE0 (gpiozero picks hardware SPI itself); `"fake"`: FakeMCP3008.

    The fake sets the process-wide `gpiozero.Device.pin_factory` (one fake ADC open at a time):
    gpiozero 2.0.1's software SPI bus ignores its pin_factory argument and asks for the
    global one, which off a Pi fails with BadPinFactory. Tests restore the previous factory.

    gpiozero registers shared SPI objects by pin names, and a closed one left in a reference
    cycle unregisters whatever holds its pins when the garbage collector finally deletes it:
    landing between our two devices, that makes the second claim the pins afresh and fail
    with GPIOPinInUse. So closed ones are collected before ours are made.
    """
    if not (0 <= import_ch < 8 and 0 <= export_ch < 8) or import_ch == export_ch:
        # Checked before any device exists: a half-built pair would leave gpiozero's shared SPI behind.
        raise ValueError(f"import and export need two distinct channels 0..7, not {import_ch} and {export_ch}")
    if kind not in ("mcp3008", "fake"):
        raise ValueError(f"unknown ADC {kind!r}: 'mcp3008' or 'fake'")
    gc.collect()
    if kind == "mcp3008":
        return Adc(MCP3008(channel=import_ch, max_voltage=vref), MCP3008(channel=export_ch, max_voltage=vref))
    factory = MockFactory()
    Device.pin_factory = factory
    fake = FakeMCP3008(factory, vref)  # before the devices, which would claim its pins as plain mock pins
    devices = [MCP3008(channel=ch, max_voltage=vref, pin_factory=factory) for ch in (import_ch, export_ch)]
    adc = Adc(devices[0], devices[1], fake=fake)
    try:
        for device in devices:
            fake.check_attached(device)
    except RuntimeError:
        adc.close()
        raise
    return adc
