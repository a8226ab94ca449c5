"""What every architecture factory promises: for the tasks it accepts, a module giving logits
``[N, classes]``, initialised reproducibly under a seed and trainable by gradient descent."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from arena.errors import InvalidParameters
from arena.models import ARCHITECTURES, build_model
from arena.registry import first_doc_line
from arena.testing.core import Conformance, NotApplicable, expect

TASKS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((1, 8, 8), 10),
    ((1, 28, 28), 10),
    ((3, 32, 32), 2),
    ((1, 28, 28), 47),
)
"""(input shape, classes) an architecture is built for: digits, MNIST-sized, CIFAR-sized binary,
and many classes; it may refuse a shape with InvalidParameters, never with another error"""


class ArchitectureConformance(Conformance):
    """One registered architecture factory under test."""

    kind = "architecture"
    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "documented",
        "builds",
        "outputs_logits",
        "deterministic_init",
        "trainable",
    )

    def tasks(self) -> list[tuple[tuple[int, ...], int]]:
        """The tasks it builds for (the others it refused with InvalidParameters)."""
        return self.once("tasks", self._accepted_tasks)

    def _accepted_tasks(self) -> list[tuple[tuple[int, ...], int]]:
        accepted = []
        for shape, classes in TASKS:
            try:
                build_model(self.name, shape, classes, seed=0)
            except InvalidParameters:
                continue
            accepted.append((shape, classes))
        return accepted

    def task(self) -> tuple[tuple[int, ...], int]:
        """The first task it builds for; the properties after ``builds`` need one."""
        tasks = self.tasks()
        if not tasks:
            raise NotApplicable("it builds for none of the sample tasks")
        return tasks[0]

    def model(self, shape: tuple[int, ...], classes: int, seed: int = 0) -> nn.Module:
        built = build_model(self.name, shape, classes, seed=seed)
        expect(isinstance(built, nn.Module), f"the factory returned {type(built).__name__}")
        return built

    def documented(self) -> None:
        """The factory has a docstring (`arena list` shows its first line)."""
        expect(bool(first_doc_line(ARCHITECTURES.get(self.name))), "the factory has no docstring")

    def builds(self) -> None:
        """It builds an nn.Module for some of the sample tasks and refuses the others only
        with InvalidParameters."""
        expect(bool(self.tasks()), f"it refused every sample task {TASKS}")
        for shape, classes in self.tasks():
            self.model(shape, classes)

    def outputs_logits(self) -> None:
        """Batches of 1 and 5 images give finite float32 logits ``[N, classes]``, in training
        and in eval mode."""
        self.task()
        for shape, classes in self.tasks():
            model = self.model(shape, classes)
            for training in (True, False):
                model.train(training)
                for n in (1, 5):
                    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(n))
                    with torch.no_grad():
                        out = model(x)
                    expect(isinstance(out, torch.Tensor), f"{shape}: output is not a tensor")
                    got = tuple(out.shape)
                    expect(got == (n, classes), f"{shape}: logits {got}, expected {(n, classes)}")
                    expect(out.dtype == torch.float32, f"{shape}: logits are {out.dtype}")
                    expect(bool(torch.isfinite(out).all()), f"{shape}: NaN or infinite logits")

    def deterministic_init(self) -> None:
        """The same seed gives the same initial weights; another seed, other weights."""
        shape, classes = self.task()
        first, again = self.model(shape, classes, 3).state_dict(), self.model(shape, classes, 3)
        other = self.model(shape, classes, 4).state_dict()
        for key, value in again.state_dict().items():
            expect(torch.equal(first[key], value), f"seeded builds differ in {key}")
        if first:
            differs = any(not torch.equal(first[k], other[k]) for k in first)
            expect(differs, "seeds 3 and 4 give identical weights: initialise from torch's RNG")

    def trainable(self) -> None:
        """Gradients reach every trainable parameter and a few Adam steps fit 16 labelled
        images better."""
        shape, classes = self.task()
        model = self.model(shape, classes).train()
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(16, *shape, generator=generator)
        y = torch.randint(0, classes, (16,), generator=generator)
        params = [p for p in model.parameters() if p.requires_grad]
        expect(bool(params), "it has no trainable parameters")
        optimizer = torch.optim.Adam(params, lr=1e-2)
        losses = []
        for step in range(25):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            if step == 0:
                dead = [
                    n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
                ]
                expect(not dead, f"no gradient reaches {dead[:3]}")
            optimizer.step()
            losses.append(loss.item())
        expect(
            losses[-1] < losses[0],
            f"training did not lower the loss ({losses[0]:.3f} -> {losses[-1]:.3f})",
        )


def check_architecture(name: str) -> None:
    """Raise ConformanceFailure unless the registered architecture ``name`` builds trainable
    logit models reproducibly; call it from your own tests."""
    ArchitectureConformance(name).check()
