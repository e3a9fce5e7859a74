"""Key names inside an original Attentive Normalization module, mapped to anzoo's.

The reference implementations subclass BatchNorm/GroupNorm and name the mixture ``weight_`` /
``bias_`` and the attention ``attention_weights.attention.{0,1}``; anzoo composes a
``norm`` child, ``mixture_weight`` / ``mixture_bias`` and ``attention.{conv,norm}``.
"""
from __future__ import annotations

__all__ = ["attentive_norm_key"]

_RENAMES = {
    "weight_": "mixture_weight",
    "bias_": "mixture_bias",
    "running_mean": "norm.running_mean",
    "running_var": "norm.running_var",
    "num_batches_tracked": "norm.num_batches_tracked",
}
_PREFIXES = {
    "attention_weights.attention.0.": "attention.conv.",
    "attention_weights.attention.1.": "attention.norm.",
}


def attentive_norm_key(rest: str) -> str:
    """Map the part of an original key after the AN module's path (e.g. ``weight_``,
    ``attention_weights.attention.1.running_var``) to anzoo's name; KeyError if unknown."""
    if rest in _RENAMES:
        return _RENAMES[rest]
    for old, new in _PREFIXES.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise KeyError(rest)
