"""Finding the layers a knob may touch, by fully qualified name (fqn) and glob patterns."""
from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by fqn, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE)}


def find_layers(
    model: nn.Module, *, include: Sequence[str], exclude: Sequence[str], key: str
) -> list[str]:
    """The fqns of compressible layers matching any ``include`` and no ``exclude`` glob.

    A pattern that matches no layer is a user error (a typo would silently search nothing),
    reported with the config ``key``, the pattern and the names that exist.
    """
    names = list(compressible_layers(model))
    for field, patterns in (("include", include), ("exclude", exclude)):
        if isinstance(patterns, str):
            raise ValueError(f"{key}.{field} must be a list of glob patterns, got {patterns!r}")
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise ValueError(
                    f"{key}.{field}: pattern {pattern!r} matches no Conv2d/Linear layer; "
                    f"layers are: {', '.join(names)}"
                )
    return [
        n
        for n in names
        if any(fnmatch.fnmatchcase(n, p) for p in include)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]


def layers_of(model: nn.Module, fqn: str) -> list[tuple[str, nn.Module]]:
    """The Conv2d/Linear layers that stand for the teacher's layer ``fqn`` in ``model``, as (fqn, layer) pairs: what a
    knob changes when it is given a value for ``fqn``, whatever the phases before it made of that layer.

    The layer keeps its teacher fqn through every phase: channel pruning leaves it in place with fewer channels (read
    shapes from the layer, not from the teacher), masks and quantizers change it in place, and a factorization
    (``rank``, ``tucker``) puts an ``nn.Sequential`` of two or three layers there, each of which is returned
    (``("fc1.0", Linear), ("fc1.1", Linear)``): ``model.get_submodule(fqn).weight`` fails on such a layer. A layer
    held as tensor-train cores (``tt``) has none: later knobs leave it alone.
    """
    module = model.get_submodule(fqn)
    if isinstance(module, COMPRESSIBLE):
        return [(fqn, module)]
    return [(f"{fqn}.{n}", m) for n, m in module.named_modules() if isinstance(m, COMPRESSIBLE)]


def set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (160 characters at most)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")


def example_input(input_shape: Sequence[int], generator: torch.Generator | None = None,
                  dtype: str = "float32") -> torch.Tensor:
    """A random input of ``input_shape``: normal floats, or for integer inputs (token ids) ids 0 and 1, which every
    vocabulary holds."""
    if torch.empty(0, dtype=getattr(torch, dtype)).is_floating_point():
        return torch.randn(*input_shape, generator=generator).to(getattr(torch, dtype))
    return torch.randint(0, 2, tuple(input_shape), generator=generator, dtype=getattr(torch, dtype))


def output_layer(model: nn.Module) -> str:
    """The classifier: the last compressible layer registered (never channel-pruned)."""
    names = list(compressible_layers(model))
    if not names:
        raise ValueError("model has no Conv2d or Linear layer to compress")
    return names[-1]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run a LAPACK decomposition on one thread, then restore the caller's count: on the 2-vCPU VMs this was
    built on, a 128 x 1152 SVD took 2.9 s with 2 threads and 8 ms with one (the parallel path thrashes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
