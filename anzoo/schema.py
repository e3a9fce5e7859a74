"""The zoo's vocabulary: detectors, backbones and normalizations, each named once.

String enums (``Detector.mask_rcnn == "mask_rcnn"``) with the label people read
(``Detector.mask_rcnn.label == "Mask R-CNN"``). ``zoo.yaml`` values, the builders in
``anzoo.models``, the command line's choices and the service's model info all use these. This
module imports nothing but the standard library, so every layer may use it.
"""
from __future__ import annotations

from enum import Enum

__all__ = ["Detector", "Backbone", "BackboneNorm", "HeadNorm", "VocabularyEnum", "BACKBONE_SHORT_NAMES"]


class VocabularyEnum(str, Enum):
    """A ``str`` enum member with a display ``label``: ``Member = ("value", "Label")``."""

    label: str

    def __new__(cls, value: str, label: str) -> "VocabularyEnum":
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member

    def __str__(self) -> str:  # f"{Detector.mask_rcnn}" -> "mask_rcnn", as the YAML spells it
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Detector(VocabularyEnum):
    mask_rcnn = ("mask_rcnn", "Mask R-CNN")
    cascade_mask_rcnn = ("cascade_mask_rcnn", "Cascade Mask R-CNN")


class Backbone(VocabularyEnum):
    resnet50 = ("resnet50", "ResNet-50")
    resnet101 = ("resnet101", "ResNet-101")
    aognet12m = ("aognet12m", "AOGNet-12m")
    aognet40m = ("aognet40m", "AOGNet-40m")


class BackboneNorm(VocabularyEnum):
    bn = ("bn", "BN")
    an = ("an", "AN (w/ BN)")
    gn = ("gn", "GN")
    sn = ("sn", "SN")


class HeadNorm(VocabularyEnum):
    none = ("none", "-")
    gn = ("gn", "GN")
    an_gn = ("an_gn", "AN (w/ GN)")
    sn = ("sn", "SN")


#: short backbone names used in ids and backbone registry names (``r50-an``, ``aognet40m-bn``).
BACKBONE_SHORT_NAMES: dict[str, str] = {"resnet50": "r50", "resnet101": "r101", "aognet12m": "aognet12m",
                                        "aognet40m": "aognet40m"}
