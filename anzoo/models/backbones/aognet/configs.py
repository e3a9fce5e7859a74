"""The four released AOGNet configurations, as data.

They transcribe the AOGNet-v2 files ``configs/aognet-{12m,40m}{,-an}-imagenet.yaml``; only the
fields that shape the network are kept. Settings shared by all four are fixed in the code and
listed here for checking against the yaml files:

* ``max_split: 2`` (binary And nodes), ``extra_node_hierarchy: 4`` (lateral connections),
  ``terminal_node_no_slice: 0`` (a Terminal node reads its own channel slice);
* ``handle_dbl_cnt: True``, ``handle_tnode_dbl_cnt: False``, ``handle_dbl_cnt_in_param_init:
  False``, ``use_elem_max_for_ORNodes: False`` (Or nodes sum), ``use_group_conv: False``;
* ``when_downsample: 1``: a stage with stride 2 starts with a transition (1x1 conv-BN-ReLU,
  2x2 average pool), so no node operation ever strides; that is also why
  ``replace_stride_with_avgpool`` (False in the 40m-bn file, True in the others) has no effect;
* ``activation_mode: 0`` (ReLU), ``stem.imagenet_head7x7: False`` (three 3x3 convs),
  ``stem.replace_maxpool_with_res_bottleneck: False`` (2x2 max-pool), ``out_channels: [0, 0]``
  (no conv head: global average pool, then ``fc``), ``norm_attention_mode: 2``;
* AN (``norm_name: MixtureBatchNorm2d``) replaces only the 3x3 conv's norm of the nodes that
  span the whole block; every other norm is BatchNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import SplitRule

__all__ = ["AOGNetConfig", "CONFIGS"]


@dataclass(frozen=True)
class AOGNetConfig:
    """Shape of an AOGNet (yaml field names in brackets)."""

    #: stem output, then the output of each of the 4 stages [filter_list]
    channels: tuple[int, int, int, int, int]
    #: AOG blocks per stage [blocks]
    blocks: tuple[int, int, int, int]
    #: primitives (channel groups) of each stage's AOG [dims]
    primitives: tuple[int, int, int, int]
    #: which of two symmetric splits each stage keeps [remove_symmetric_children_of_or_node:
    #: 1 -> shorter_left, 2 -> longer_left]
    split_rules: tuple[SplitRule, SplitRule, SplitRule, SplitRule]
    #: downsampling at the start of each stage [stride]
    strides: tuple[int, int, int, int]
    #: Dropout2d after the last norm of every node operation [drop_rate]
    drop_rates: tuple[float, float, float, float]
    #: 'bn' or 'an' [norm_name]
    norm: str
    #: AN mixture components per stage [norm_k]
    an_k: tuple[int, int, int, int] = (10, 10, 20, 20)
    #: bottleneck width / output width of a node operation [bottleneck_ratio]
    bottleneck_ratio: float = 0.25

    def block_channels(self, stage: int) -> list[tuple[int, int]]:
        """(input, output) channels of each block of ``stage``: the stage grows its width in
        equal steps, rounded to a multiple of the primitives, the last block reaching the
        stage's output exactly."""
        cin, cout, n = self.channels[stage], self.channels[stage + 1], self.blocks[stage]
        dim = self.primitives[stage]
        step = (cout - cin) // n
        if step % dim:
            low = step // dim * dim
            step = low if step - low <= low + dim - step else low + dim
        widths = [cin + step * (j + 1) for j in range(n - 1)] + [cout]
        return list(zip([cin] + widths[:-1], widths))


_SHARED_12M = dict(
    channels=(32, 128, 256, 512, 824), blocks=(2, 2, 2, 1), primitives=(2, 2, 4, 4),
    split_rules=("shorter_left", "longer_left", "shorter_left", "longer_left"),
    strides=(1, 2, 2, 2), drop_rates=(0.0, 0.0, 0.1, 0.1),
)
_SHARED_40M = dict(_SHARED_12M, channels=(56, 224, 448, 896, 1400), blocks=(2, 2, 3, 1))

#: backbone name -> configuration (names as registered in anzoo)
CONFIGS: dict[str, AOGNetConfig] = {
    "aognet12m-bn": AOGNetConfig(norm="bn", **_SHARED_12M),  # aognet-12m-imagenet.yaml
    "aognet12m-an": AOGNetConfig(norm="an", **_SHARED_12M),  # aognet-12m-an-imagenet.yaml
    "aognet40m-bn": AOGNetConfig(norm="bn", **_SHARED_40M),  # aognet-40m-imagenet.yaml
    "aognet40m-an": AOGNetConfig(norm="an", **_SHARED_40M),  # aognet-40m-an-imagenet.yaml
}
