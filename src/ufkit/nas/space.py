"""The search space: sub-architectures of one BERT encoder, as AutoTinyBERT and Bigger&Faster define them.

A sub-architecture (:class:`ArchConfig`) keeps the first ``num_hidden_layers`` layers of the base model and, in
every matrix, the first ``hidden_size`` rows/columns of the hidden dimension and the first ``intermediate_size``
of the feedforward dimension (Yin et al., "AutoTinyBERT: Automatic Hyper-parameter Optimization for Efficient
Pre-trained Language Models", ACL 2021, arXiv:2107.13686). The head size stays fixed (32 for MiniLM-L6-H384), so
``num_attention_heads = hidden_size / head_size``: plain Hugging Face BERT needs ``heads * head_size ==
hidden_size``, and the first ``hidden_size`` rows of the query/key/value matrices then hold whole heads.

:class:`SearchSpace` lists the allowed values of each of the three fields. It is small enough to enumerate
(330 architectures over MiniLM-L6-H384), which the tests and the search's error messages use.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from typing import Iterator, Sequence

import numpy as np

from .. import UfkitError

ARCH_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size")


class NasError(UfkitError, ValueError):
    """Bad input to the architecture search: an architecture outside the space, a bad latency target or window,
    a model that is not a BERT encoder, an empty latency table."""


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise NasError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, order=True)
class ArchConfig:
    """One sub-architecture: the first ``num_hidden_layers`` layers, ``hidden_size`` and ``intermediate_size`` wide.

    Attributes:
        num_hidden_layers: transformer layers kept (the first ones).
        hidden_size: width of the residual stream, embeddings and pooler; a multiple of ``head_size``.
        intermediate_size: width of every feedforward layer.
        head_size: width of one attention head (fixed by the base model; 32 for MiniLM-L6-H384).

    Raises:
        NasError: a field that is not a positive integer, or ``hidden_size`` not a multiple of ``head_size``.
            Membership in a space is checked by :meth:`SearchSpace.validate`.
    """

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    head_size: int = 32

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _positive_int(f.name, getattr(self, f.name)))
        if self.hidden_size % self.head_size:
            raise NasError(f"hidden_size must be a multiple of head_size={self.head_size} (whole attention heads), "
                           f"got {self.hidden_size}")

    @property
    def num_attention_heads(self) -> int:
        """``hidden_size / head_size``."""
        return self.hidden_size // self.head_size

    def to_dict(self) -> dict[str, int]:
        """The three searched fields and ``num_attention_heads`` (the columns of every table in this package)."""
        return {"num_hidden_layers": self.num_hidden_layers, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size, "num_attention_heads": self.num_attention_heads}

    def short(self) -> str:
        """``"L4-H256-F768"``: layers, hidden size, intermediate size."""
        return f"L{self.num_hidden_layers}-H{self.hidden_size}-F{self.intermediate_size}"

    def __str__(self) -> str:
        return self.short()


def _default_hidden_choices(hidden: int, head: int) -> tuple[int, ...]:
    """Multiples of ``head`` from about a third of ``hidden`` up to ``hidden``, about six steps apart.

    MiniLM-L6-H384 (head 32): 128, 192, 256, 320, 384. A tiny hidden 64, head 32: 32, 64.
    """
    step = max(head, head * round(hidden / 6 / head))
    lo = max(head, head * math.ceil(hidden / 3 / head))
    return tuple(range(hidden, lo - 1, -step))[::-1]


def _default_intermediate_choices(intermediate: int) -> tuple[int, ...]:
    """Multiples of ``intermediate / 12`` from a sixth of ``intermediate`` up to it (MiniLM: 256, 384, ..., 1536)."""
    step = max(1, intermediate // 12)
    return tuple(range(intermediate, 2 * step - 1, -step))[::-1]


@dataclass(frozen=True)
class SearchSpace:
    """The allowed values of each field of :class:`ArchConfig`, over one base model.

    Attributes:
        num_hidden_layers, hidden_size, intermediate_size: allowed values, ascending; the largest of each is the
            base model's size.
        head_size: attention head width of the base model.

    Raises:
        NasError: an empty or unsorted list of choices, a hidden size that is not a multiple of ``head_size``.
    """

    num_hidden_layers: tuple[int, ...]
    hidden_size: tuple[int, ...]
    intermediate_size: tuple[int, ...]
    head_size: int = 32

    def __post_init__(self):
        _positive_int("head_size", self.head_size)
        for name in ARCH_FIELDS:
            values = tuple(_positive_int(name, v) for v in getattr(self, name))
            if not values:
                raise NasError(f"{name} needs at least one allowed value")
            if list(values) != sorted(set(values)):
                raise NasError(f"the allowed values of {name} must be distinct and ascending, got {list(values)}")
            object.__setattr__(self, name, values)
        bad = [h for h in self.hidden_size if h % self.head_size]
        if bad:
            raise NasError(f"hidden_size values must be multiples of head_size={self.head_size}, got {bad}")

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def from_config(cls, config, *, num_hidden_layers: Sequence[int] | None = None,
                    hidden_size: Sequence[int] | None = None, intermediate_size: Sequence[int] | None = None,
                    head_size: int | None = None) -> "SearchSpace":
        """A space over a base ``BertConfig``: every depth from 1, hidden sizes from about a third of the base's in
        steps of about a sixth (whole heads), intermediate sizes from a sixth of the base's in steps of a twelfth.

        For MiniLM-L6-H384: layers 1..6; hidden 128, 192, 256, 320, 384 (4 to 12 heads of 32); intermediate 256,
        384, ..., 1536 (11 values); 330 architectures. Any list may be given instead.

        Raises:
            NasError: a value above the base model's size, or the lists' own errors (see the class).
        """
        head = int(head_size or config.hidden_size // config.num_attention_heads)
        space = cls(
            num_hidden_layers=tuple(num_hidden_layers or range(1, config.num_hidden_layers + 1)),
            hidden_size=tuple(hidden_size or _default_hidden_choices(config.hidden_size, head)),
            intermediate_size=tuple(intermediate_size or _default_intermediate_choices(config.intermediate_size)),
            head_size=head)
        for name in ARCH_FIELDS:
            base = int(getattr(config, name))
            if max(getattr(space, name)) > base:
                raise NasError(f"{name} choices {list(getattr(space, name))} exceed the base model's {name}={base}")
        return space

    def to_dict(self) -> dict:
        """JSON-able form (lists), for the super-model's config file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # ----------------------------------------------------------------------------------------- membership

    @property
    def largest(self) -> ArchConfig:
        """The base model itself (every field at its largest value)."""
        return ArchConfig(self.num_hidden_layers[-1], self.hidden_size[-1], self.intermediate_size[-1], self.head_size)

    @property
    def smallest(self) -> ArchConfig:
        return ArchConfig(self.num_hidden_layers[0], self.hidden_size[0], self.intermediate_size[0], self.head_size)

    def arch(self, num_hidden_layers: int, hidden_size: int, intermediate_size: int) -> ArchConfig:
        """An :class:`ArchConfig` of this space (validated)."""
        return self.validate(ArchConfig(num_hidden_layers, hidden_size, intermediate_size, self.head_size))

    def validate(self, arch) -> ArchConfig:
        """Return ``arch`` if it belongs to the space, else raise.

        Args:
            arch: an :class:`ArchConfig`, or a dict/tuple of ``(num_hidden_layers, hidden_size, intermediate_size)``.

        Raises:
            NasError: naming the first field whose value is not allowed, and the allowed values; or a head size that
                differs from the space's.
        """
        if isinstance(arch, dict):
            arch = ArchConfig(*(arch[k] for k in ARCH_FIELDS), head_size=self.head_size)
        elif isinstance(arch, (tuple, list)) and not isinstance(arch, ArchConfig):
            if len(arch) != 3:
                raise NasError(f"an architecture is (num_hidden_layers, hidden_size, intermediate_size), got {arch!r}")
            arch = ArchConfig(*arch, head_size=self.head_size)
        elif not isinstance(arch, ArchConfig):
            raise NasError(f"arch must be an ArchConfig, got {type(arch).__name__}")
        if arch.head_size != self.head_size:
            raise NasError(f"arch has head_size={arch.head_size}, the space's heads are {self.head_size} wide")
        for name in ARCH_FIELDS:
            allowed = getattr(self, name)
            if getattr(arch, name) not in allowed:
                raise NasError(f"{name}={getattr(arch, name)} is not in the search space; allowed values: "
                               f"{list(allowed)}")
        return arch

    def __contains__(self, arch) -> bool:
        try:
            self.validate(arch)
        except NasError:
            return False
        return True

    def __iter__(self) -> Iterator[ArchConfig]:
        """Every architecture, in lexicographic order of (layers, hidden, intermediate)."""
        for l, h, f in itertools.product(self.num_hidden_layers, self.hidden_size, self.intermediate_size):
            yield ArchConfig(l, h, f, self.head_size)

    def __len__(self) -> int:
        return len(self.num_hidden_layers) * len(self.hidden_size) * len(self.intermediate_size)

    # ----------------------------------------------------------------------------------- random operators

    def sample(self, rng: np.random.Generator) -> ArchConfig:
        """A uniformly random architecture (each field drawn independently)."""
        return ArchConfig(*(int(rng.choice(getattr(self, n))) for n in ARCH_FIELDS), head_size=self.head_size)

    def mutate(self, arch: ArchConfig, rng: np.random.Generator, rate: float = 0.5) -> ArchConfig:
        """Redraw each field uniformly from its allowed values with probability ``rate``; at least one field changes
        (a field is forced when none was picked), so a mutation never returns its input unless the space has one
        architecture.

        Raises:
            NasError: ``rate`` outside ``[0, 1]``, or ``arch`` outside the space.
        """
        if not 0.0 <= rate <= 1.0:
            raise NasError(f"rate must be in [0, 1], got {rate!r}")
        arch = self.validate(arch)
        values = {n: getattr(arch, n) for n in ARCH_FIELDS}
        movable = [n for n in ARCH_FIELDS if len(getattr(self, n)) > 1]
        if not movable:
            return arch
        picked = [n for n in movable if rng.random() < rate] or [movable[int(rng.integers(len(movable)))]]
        for n in picked:
            others = [v for v in getattr(self, n) if v != values[n]]
            values[n] = int(rng.choice(others))  # a different value: "mutated" means changed
        return ArchConfig(**values, head_size=self.head_size)

    def crossover(self, a: ArchConfig, b: ArchConfig, rng: np.random.Generator) -> ArchConfig:
        """Each field taken from ``a`` or ``b`` with probability 1/2 (uniform crossover)."""
        a, b = self.validate(a), self.validate(b)
        return ArchConfig(**{n: getattr(a if rng.random() < 0.5 else b, n) for n in ARCH_FIELDS},
                          head_size=self.head_size)


def minilm_space() -> SearchSpace:
    """The space over MiniLM-L6-H384 used in the book: layers 1-6, hidden 128-384 in steps of 64, intermediate
    256-1536 in steps of 128 (330 architectures)."""
    return SearchSpace(num_hidden_layers=tuple(range(1, 7)), hidden_size=(128, 192, 256, 320, 384),
                       intermediate_size=tuple(range(256, 1537, 128)), head_size=32)
