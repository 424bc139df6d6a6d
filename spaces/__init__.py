"""What can be chosen and how a choice changes a model.

One ``BaseSpace`` per knob (channels, rank, sparsity, bits); ``JointSpace`` composes them and
replays a trial with ``space.apply(teacher, trial.params)``; ``StudentSpace`` puts the choice of a student
architecture (a ``BaseFamily``) in front of them; ``materialize`` turns the result into the artifact that
the objectives measure.
"""
from ._base import BaseFamily, BaseSpace
from ._compressed import FLOAT_BITS, calibrate, to_plain
from .channels import ChannelSpace
from .fold import fold_batchnorm
from .joint import JointSpace
from .lowrank import RankSpace
from .materialize import Artifact, materialize
from .packing import pack, unpack
from .quant import QuantSpace
from .sparsity import SparsitySpace
from .students import ARCH, FIXED_ARCH, STUDENT, TEACHER, StudentFamily, StudentSpace

__all__ = [
    "BaseSpace", "BaseFamily", "JointSpace", "StudentSpace", "StudentFamily", "ARCH", "FIXED_ARCH", "STUDENT", "TEACHER",
    "ChannelSpace", "RankSpace", "SparsitySpace", "QuantSpace",
    "Artifact", "materialize", "pack", "unpack", "calibrate", "to_plain", "fold_batchnorm", "FLOAT_BITS",
]
