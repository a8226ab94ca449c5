"""Already-trained models read from files: what a victim with ``checkpoint:`` serves.

A checkpoint is never retrained. Its form is told from the file's contents, not its name:

1. a **torch.export archive** (``torch.export.save``, usually ``.pt2``): a zip archive with an
   ``archive_format`` member; served as ``torch.export.load(f).module()``. Export it with a
   dynamic batch dimension (``dynamic_shapes``): a program exported for one batch size rejects
   every other, and the service answers batches of any size;
2. a **TorchScript archive** (``torch.jit.save``): a zip archive with ``constants.pkl`` and
   ``code/`` members; served as ``torch.jit.load(f)``;
3. otherwise a **state dict** (``torch.save(model.state_dict())``, or a dict holding it under
   ``"state_dict"``), read with ``torch.load(weights_only=True)`` (no pickled code runs) into a
   new model of the victim's ``arch``, whose keys and shapes it must match exactly.

Archives (1, 2) carry their own architecture; they are served wrapped in :class:`ArchiveModel`,
which keeps the archive's bytes as a buffer, so the model can be rebuilt from its state dict
alone (that is how a victim reaches its Ray actor: the file need only exist on the driver) and
pickled. An exported program has a fixed train/eval mode: :class:`ArchiveModel` leaves it as
exported (export it in eval mode).

Every check here ends in one line naming the file: missing, unreadable, a form not recognised,
keys or shapes that do not fit ``arch``, or outputs that are not ``[N, num_classes]`` on a batch
of the task's images.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Literal, Self

import torch
from torch import nn

from arena.errors import InvalidParameters, brief, one_line
from arena.models import build_model

CheckpointForm = Literal["export", "torchscript", "state_dict"]
ARCHIVE_BUFFER = "arena_archive"
"""the state-dict key under which an :class:`ArchiveModel` keeps its archive's bytes"""
CHECK_BATCH = 3
"""images a checkpoint is checked on: more than one, so a program exported for a single batch
size fails here, before serving, rather than on the first batch of another size"""
LISTED = 3
"""keys an error lists before counting the rest"""
REASON_LIMIT = 160


def _reason(exc: BaseException) -> str:
    """An exception as one short line: its first line, or for TorchScript (whose first line
    only says the interpreter failed) its last, the error itself."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [""]
    line = (lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]).strip()
    name = type(exc).__name__
    return one_line(line if line.startswith(f"{name}:") else f"{name}: {line}", REASON_LIMIT)


def _named(path: str) -> str:
    return f"checkpoint {brief(path)}"


def read_checkpoint(path: str, sha256: str | None = None) -> bytes:
    """The file's bytes; with ``sha256`` they must still be the content the spec was keyed by."""
    where = Path(path).expanduser()
    try:
        blob = where.read_bytes()
    except FileNotFoundError:
        raise InvalidParameters(
            f"{_named(path)} not found; give the path of a saved model (relative paths are "
            "from the working directory)"
        ) from None
    except OSError as exc:
        raise InvalidParameters(f"{_named(path)} cannot be read ({_reason(exc)})") from None
    if sha256 is not None and (now := hashlib.sha256(blob).hexdigest()) != sha256:
        raise InvalidParameters(
            f"{_named(path)} has sha256 {now[:12]}…, not the {sha256[:12]}… its victim is keyed "
            "by (it changed since the spec was made, or checkpoint_sha256 pins another file); "
            "read the config again so the victim is keyed by the file's content"
        )
    return blob


def checkpoint_form(blob: bytes) -> CheckpointForm:
    """Which of the three forms the bytes hold (see the module docstring)."""
    if not zipfile.is_zipfile(io.BytesIO(blob)):
        return "state_dict"  # torch.save's legacy (non-zip) format
    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    members = {name.partition("/")[2] for name in names}
    if "archive_format" in members:
        return "export"
    if "constants.pkl" in members and any(m.startswith("code/") for m in members):
        return "torchscript"
    return "state_dict"


def _load_archive(blob: bytes, form: CheckpointForm) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        if form == "export":
            return torch.export.load(io.BytesIO(blob)).module()
        module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(blob), map_location="cpu"
        )
        return module


class ArchiveModel(nn.Module):
    """A TorchScript or torch.export model together with its archive's bytes, so that its
    state dict alone rebuilds it (:meth:`from_state`) and it survives pickling."""

    def __init__(self, blob: bytes) -> None:
        super().__init__()
        form = checkpoint_form(blob)
        if form == "state_dict":
            raise ValueError("not a TorchScript or torch.export archive")
        self.form: CheckpointForm = form
        self.model = _load_archive(blob, form)
        self.register_buffer(ARCHIVE_BUFFER, torch.frombuffer(bytearray(blob), dtype=torch.uint8))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> ArchiveModel:
        """The model a state dict of an :class:`ArchiveModel` describes."""
        model = cls(archive_bytes(state[ARCHIVE_BUFFER]))
        model.load_state_dict(state)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def train(self, mode: bool = True) -> Self:
        """An exported program cannot switch modes (it runs as exported); TorchScript can."""
        self.training = mode
        if self.form == "torchscript":
            self.model.train(mode)
        return self

    def __reduce__(self) -> tuple[object, tuple[dict[str, torch.Tensor]]]:
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return (ArchiveModel.from_state, (state,))


def archive_bytes(buffer: torch.Tensor) -> bytes:
    return buffer.detach().cpu().numpy().tobytes()


def is_archive_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is an :class:`ArchiveModel`'s (rebuilt from its own bytes)."""
    return ARCHIVE_BUFFER in state


def load_checkpoint(
    path: str,
    arch: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    sha256: str | None = None,
    batch: torch.Tensor | None = None,
) -> nn.Module:
    """The model the file holds, checked against the task (``batch``: images of the task, by
    default random ones of ``input_shape``), in eval mode. ``arch`` builds a state dict's model;
    an archive needs none."""
    blob = read_checkpoint(path, sha256)
    form = checkpoint_form(blob)
    model: nn.Module
    if form == "state_dict":
        model = build_model(arch, input_shape, num_classes)
        state = _state_dict(blob, path)
        if problem := fit_problem(model.state_dict(), state):
            raise InvalidParameters(f"{_named(path)} does not fit architecture {arch!r}: {problem}")
        model.load_state_dict(state)
    else:
        try:
            model = ArchiveModel(blob)
        except Exception as exc:
            raise InvalidParameters(
                f"{_named(path)} is a {form} archive that does not load ({_reason(exc)})"
            ) from None
    check_outputs(model.eval(), path, form, input_shape, num_classes, batch)
    return model


def _state_dict(blob: bytes, path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file: the dict itself or its ``"state_dict"`` entry."""
    try:
        loaded = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidParameters(
            f"{_named(path)} holds pickled objects other than tensors (a whole model?), which "
            "are never loaded; save model.state_dict(), torch.jit.save or torch.export.save"
        ) from None
    except Exception as exc:
        raise InvalidParameters(
            f"{_named(path)} is not a state dict, TorchScript or torch.export archive "
            f"({_reason(exc)}); save model.state_dict(), torch.jit.save or torch.export.save"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise InvalidParameters(
            f"{_named(path)} holds a {type(loaded).__name__}, not a state dict; "
            "save model.state_dict()"
        )
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidParameters(
                f"{_named(path)} is not a state dict: {brief(key)} holds a "
                f"{type(value).__name__}, not a tensor; save model.state_dict()"
            )
    return {str(k): v for k, v in loaded.items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(brief(k) for k in keys[:LISTED])
    return shown + (f" (+{len(keys) - LISTED} more)" if len(keys) > LISTED else "")


def fit_problem(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``found`` from loading where ``expected`` is: keys missing, keys unexpected,
    shapes that differ; ``None`` when it fits exactly."""
    problems = []
    if missing := [k for k in expected if k not in found]:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected := [k for k in found if k not in expected]:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    for key, tensor in expected.items():
        if key in found and found[key].shape != tensor.shape:
            problems.append(
                f"{brief(key)} has shape {list(found[key].shape)} in the file and "
                f"{list(tensor.shape)} in the architecture (trained for another dataset?)"
            )
            break
    return "; ".join(problems) or None


def check_outputs(
    model: nn.Module,
    path: str,
    form: CheckpointForm,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch: torch.Tensor | None = None,
) -> None:
    """One batch of the task's images through the model: it must run and give
    ``[N, num_classes]`` logits."""
    if batch is None:
        generator = torch.Generator().manual_seed(0)
        batch = torch.rand(CHECK_BATCH, *input_shape, generator=generator)
    wanted = [int(batch.shape[0]), num_classes]
    hint = " (export with a dynamic batch dimension)" if form == "export" else ""
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as exc:
        raise InvalidParameters(
            f"{_named(path)} fails on a batch of {wanted[0]} images of shape "
            f"{list(input_shape)} ({_reason(exc)}){hint}; it must be a model of this dataset"
        ) from None
    if not isinstance(out, torch.Tensor) or list(out.shape) != wanted:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParameters(
            f"{_named(path)} gives outputs {got} on {wanted[0]} images of shape "
            f"{list(input_shape)}; this dataset needs logits {wanted} ({num_classes} classes)"
        )
