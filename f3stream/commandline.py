"""What every ``f3stream`` command shares: how it is registered, its model options and how the
tokenizer is loaded from them.

A command module (``f3stream.cli`` itself, ``bench``, ``generate``, ``mic``, ``bulk.cli``,
``evaluation.cli``, ``server.cli``) has one ``register(subs)`` that calls :func:`add_command`
once per command, :func:`add_model_options` when the command runs the model, and
:func:`load_tokenizer` (or :func:`model_spec`, for commands that load in worker processes) when
it runs. The backend choices and their help come from the backend registry
(:mod:`f3stream.backends`), never from a list of names here.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from .errors import F3StreamError

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

DEVICES = ("cpu", "auto", "cuda")


class CLIError(F3StreamError):
    """A problem with the command-line arguments found after parsing (e.g. no GPU): one
    ``f3stream: error:`` line and exit status 2."""


def one_line_usage_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Makes ``p``'s usage errors one ``PROG: error: ... (see PROG --help)`` line, as every
    other f3stream error is (argparse prints the whole usage first)."""
    def one_line_error(message: str) -> NoReturn:
        p.exit(2, f"{p.prog}: error: {message} (see {p.prog} --help)\n")
    p.error = one_line_error
    return p


def add_command(subs, name: str, help_: str, description: str, examples: str,
                func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Registers ``f3stream NAME``: ``description`` is wrapped to 79 columns, ``examples`` (one
    command per line, indented) end the help, ``func(args) -> exit status`` runs it, and a
    usage error is one line (:func:`one_line_usage_errors`)."""
    p = subs.add_parser(name, help=help_, description=textwrap.fill(description, 79),
                        epilog=("examples:\n" if examples.count("\n") > 1 else "example:\n")
                        + examples,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    one_line_usage_errors(p)
    p.set_defaults(func=func)
    return p


def add_model_options(p: argparse.ArgumentParser, *, device: str | None = "--device",
                      backend: bool = True, backend_default: str = "torch") -> None:
    """``--checkpoint``, the compute device (``device`` names the flag: ``--model-device`` where
    ``--device`` means something else; None: the command runs on the CPU) and ``--backend``
    (choices from the registry; ``backend_default`` is what :func:`load_tokenizer` uses when
    it is not given, as the help says)."""
    from .backends import BACKENDS, describe_backends

    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="checkpoint directory (config.json + model.safetensors); default: "
                        "the bundled one")
    if device is not None:
        p.add_argument(device, dest="model_device", choices=DEVICES, default="cpu",
                       help="where to run the model; auto = CUDA if available, else CPU "
                            "(default: cpu)")
        p.set_defaults(_device_flag=device)
    if backend:
        p.add_argument("--backend", choices=BACKENDS, default=None,
                       help=f"inference engine: {describe_backends()}; default: "
                            f"{backend_default}")


@dataclass(frozen=True)
class ModelSpec:
    """The model a command's arguments ask for, checked (a GPU that is not there is a
    :class:`CLIError` before anything loads)."""

    checkpoint: str | None
    device: str
    backend: str


def model_spec(args: argparse.Namespace, default_backend: str = "torch") -> ModelSpec:
    """The checked :class:`ModelSpec` of the options :func:`add_model_options` added."""
    device = getattr(args, "model_device", "cpu")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            flag = getattr(args, "_device_flag", "--device")
            raise CLIError(f"{flag} cuda was requested but no CUDA GPU is available; use "
                           f"{flag} auto (GPU if present, else CPU) or {flag} cpu")
    return ModelSpec(getattr(args, "checkpoint", None), device,
                     getattr(args, "backend", None) or default_backend)


def load_tokenizer(args: argparse.Namespace, default_backend: str = "torch") -> "Tokenizer":
    """The tokenizer the command's model options ask for."""
    from .tokenizer import Tokenizer

    spec = model_spec(args, default_backend)
    return Tokenizer.load(spec.checkpoint, spec.device, spec.backend)


__all__ = ["CLIError", "DEVICES", "ModelSpec", "add_command", "add_model_options",
           "load_tokenizer", "model_spec", "one_line_usage_errors"]
