"""f3stream in pipecat pipelines (``pip install 'f3stream[pipecat]'``).

* :class:`EncoderProcessor`: the pipeline's input audio (any rate) -> :class:`LatentFrame`\\ s,
  tokenized in-process; the audio passes through.
* :class:`RemoteEncoderProcessor`: the same through an ``f3stream serve`` server (protocol
  version 2), reconnecting a bounded number of times when the server goes away.
* :class:`DecoderProcessor`: :class:`LatentFrame`\\ s -> ``OutputAudioRawFrame``\\ s at the
  pipeline's (or a chosen) output rate.

::

    Pipeline([transport.input(), EncoderProcessor(tok), agent, DecoderProcessor(tok),
              transport.output()])
"""

try:
    import pipecat  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("f3stream.integrations.pipecat needs pipecat: "
                      "pip install 'f3stream[pipecat]'") from e

from .decoder import DecoderProcessor
from .encoder import EncoderProcessor
from .frames import LatentFrame
from .remote import RemoteEncoderProcessor, RemoteUnavailableError

__all__ = ["DecoderProcessor", "EncoderProcessor", "LatentFrame", "RemoteEncoderProcessor",
           "RemoteUnavailableError"]
