"""Adapters that put the tokenizer into voice-agent frameworks. Each one needs its framework,
installed by the extra of the same name (``pip install 'f3stream[pipecat]'``)."""
