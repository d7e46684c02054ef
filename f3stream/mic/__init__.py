"""``f3stream mic``: live microphone -> tokens (-> live reconstruction), with a status line.

Pipeline (three threads, none of them waits on another for long):

* PortAudio's audio callback copies each captured block into a bounded queue with
  ``put_nowait``. It never blocks: when the queue is full (the model cannot keep up) the block
  is dropped and counted, so a slow machine shows ``dropped N`` instead of hanging the device.
* A worker thread resamples to the model's rate when the device cannot capture at it
  (:class:`~f3stream.resampling.StreamResampler`, libsoxr's streaming resampler, the one files
  and the server use; docs/benchmarks.md compares it with the FIR it replaced), quantises to
  the 16-bit grid (so ``captured.wav`` holds exactly the samples the tokenizer saw), and pushes
  one 40 ms frame at a time through an :class:`~f3stream.session.EncoderSession`, timing each
  frame. With playback it also decodes each frame and hands the PCM to the output stream's
  callback.
* The main thread redraws one status line (~10x per second on a terminal) and stops on Ctrl-C
  or ``--seconds``; then the session is flushed and tokens/audio are written atomically.

End-to-end latency is measured from the capture time of a frame's last sample to the moment
that frame's latents and representations are ready. The capture time is PortAudio's ADC
timestamp mapped onto ``time.monotonic``, clamped to the time of the callback that delivered
the sample (the host API may report none, or, like ALSA's pulse plugin, one in the future), so
the figure is a lower bound that always includes queueing and compute.

Modules: ``devices`` (sounddevice/PortAudio, finding the devices), ``pipeline`` (the worker:
capture -> 16-bit -> tokens, timed), ``playback`` (the live reconstruction's FIFO to the output
device), ``status`` (the live figures and the status line), ``errors`` (:class:`MicError`) and
``cli`` (the command: the audio callbacks, the status loop, the final summary).
"""

from __future__ import annotations

from .cli import cmd_mic, register
from .devices import import_sounddevice, list_devices, resolve_input, resolve_output
from .errors import MicError
from .pipeline import MicPipeline, MicResult, quantize_int16
from .playback import PlaybackBuffer
from .status import LiveStats

__all__ = ["LiveStats", "MicError", "MicPipeline", "MicResult", "PlaybackBuffer", "cmd_mic",
           "import_sounddevice", "list_devices", "quantize_int16", "register", "resolve_input",
           "resolve_output"]
