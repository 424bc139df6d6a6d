"""What can be chosen and how a choice changes a model.

One ``BaseKnob`` per compression technique, one module each under ``spaces/knobs/`` (discovered: a new knob is
a new file); ``JointSpace`` composes them phase by phase and replays a trial with
``space.apply(teacher, trial.params)``; ``StudentSpace`` puts the choice of a student architecture (a
``BaseFamily``: a fixed family, or ``DerivedFamily``'s cuts of the teacher) in front of them; ``materialize`` turns
the result into the artifact the objectives measure; ``probe`` finds, before any trial, the layers where a knob breaks
the model.

A knob written in another package (``+space.knobs.<name>._target_=mypkg.MyKnob``) needs only the names below:
``layers_of`` (the layers that stand for a teacher layer, whatever the phases before it made of it), ``mask_``
(weights zeroed for good), ``quantize_`` with a ``WeightQuantizer`` (weights stored its way) or an
``ActFakeQuant`` (quantized inputs), and ``weight_mask`` / ``weight_quantizer`` to read what an earlier phase set.
"""
from . import knobs
from ._base import BaseFamily, BaseKnob, Phase
from ._compressed import (
    ActFakeQuant, Float16Quantizer, LinearQuantizer, WeightQuantizer, calibrate, mask_, quantize_, to_plain,
    weight_mask, weight_quantizer,
)
from ._layers import layers_of, one_line
from .derive import DROPPED, DerivedFamily
from .fold import fold_batchnorm
from .joint import JointSpace
from .knobs import *  # noqa: F403 - every knob class, by the knob modules' own __all__
from .materialize import INT4_CHOICES, Artifact, materialize
from .packing import FLOAT_BITS, HALF_BITS, Codec, PackedTensor, pack, register_codec, unpack
from .probe import probe
from .students import ARCH, FIXED_ARCH, STUDENT, TEACHER, StudentFamily, StudentSpace

__all__ = [
    "BaseKnob", "BaseFamily", "Phase", "JointSpace", "StudentSpace", "StudentFamily", "DerivedFamily", "DROPPED",
    "ARCH", "FIXED_ARCH", "STUDENT", "TEACHER", "WeightQuantizer", "LinearQuantizer", "Float16Quantizer",
    "ActFakeQuant", "Artifact", "materialize", "INT4_CHOICES", "pack", "unpack", "register_codec", "Codec", "calibrate",
    "to_plain", "fold_batchnorm", "FLOAT_BITS", "HALF_BITS", "probe", "layers_of", "mask_", "quantize_", "weight_mask",
    "weight_quantizer", "PackedTensor", "one_line", *knobs.__all__,
]
