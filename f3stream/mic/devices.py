"""Audio devices through ``sounddevice`` (PortAudio): importing it, finding the input and output
devices ``--device``/``--output-device`` name, and a rate each accepts. Every failure becomes a
:class:`~f3stream.mic.errors.MicError`, so a missing library or device is one error line."""

from __future__ import annotations

from typing import Any

from .errors import MicError, one_line


def import_sounddevice() -> Any:
    """Imports ``sounddevice``, turning a missing package or PortAudio library into
    :class:`MicError` (the module raises OSError at import when libportaudio is absent)."""
    try:
        import sounddevice as sd
    except ImportError:
        raise MicError("the mic command needs the 'sounddevice' package: pip install "
                       "'f3stream[mic]'") from None
    except OSError as e:
        raise MicError(f"cannot use audio devices: {e} (install the system package "
                       "libportaudio2, e.g. apt-get install libportaudio2)") from None
    return sd


def _device_arg(device: str | None) -> int | str | None:
    """``--device 3`` is an index, anything else a (sub)string of a device name."""
    if device is None:
        return None
    return int(device) if device.strip().lstrip("-").isdigit() else device


def resolve_input(sd: Any, device: str | None, want_rate: int, strict: bool = False
                  ) -> tuple[int, str, int]:
    """Returns (device index, device name, capture rate): ``want_rate`` if the device accepts
    it for mono float32 capture, else (unless ``strict``) the device's default rate, which the
    pipeline then resamples."""
    return _resolve(sd, device, want_rate, "input", strict)


def resolve_output(sd: Any, device: str | None, want_rate: int) -> tuple[int, str, int]:
    """Like :func:`resolve_input` for the playback device."""
    return _resolve(sd, device, want_rate, "output")


def _resolve(sd: Any, device: str | None, want_rate: int, kind: str, strict: bool = False
             ) -> tuple[int, str, int]:
    dev = _device_arg(device)
    try:
        info = sd.query_devices(dev, kind=kind)
    except (ValueError, sd.PortAudioError) as e:
        what = f"{kind} device {device!r}" if device is not None else f"default {kind} device"
        raise MicError(f"no usable {what}: {one_line(e)} (see 'f3stream mic --list-devices')"
                       ) from None
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    if int(info[channels_key]) < 1:
        raise MicError(f"device {info['name']!r} has no {kind} channels "
                       "(see 'f3stream mic --list-devices')")
    index = int(info["index"])
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(index, channels=1, dtype="float32", samplerate=want_rate)
        return index, str(info["name"]), want_rate
    except (ValueError, sd.PortAudioError) as e:
        if strict:
            raise MicError(f"{kind} device {info['name']!r} cannot capture {want_rate} Hz mono "
                           f"float32: {one_line(e)}") from None
    rate = int(round(float(info["default_samplerate"])))
    try:
        check(index, channels=1, dtype="float32", samplerate=rate)
    except (ValueError, sd.PortAudioError) as e:
        raise MicError(f"{kind} device {info['name']!r} accepts neither {want_rate} Hz nor its "
                       f"default {rate} Hz mono float32: {one_line(e)}") from None
    return index, str(info["name"]), rate


def list_devices() -> str:
    """The device table as ``sounddevice`` prints it (``>`` default input, ``<`` output)."""
    sd = import_sounddevice()
    try:
        return str(sd.query_devices())
    except sd.PortAudioError as e:
        raise MicError(f"cannot list audio devices: {one_line(e)}") from None
