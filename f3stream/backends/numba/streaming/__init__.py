"""Mirrors of :mod:`f3stream.streaming`, module for module (state, conv, attention, framing)."""
