"""The AOG grammar of AOGNet blocks: node numbering, child orders, path counts, lateral edges.

The expected graphs were produced by AOGNet-v2's ``AOG.py`` (``get_aog(grid_ht=1,
grid_wd=N, max_split=2, use_node_lateral_connection=True,
remove_symmetric_children_of_or_node=1|2)``, each run in a fresh interpreter) and frozen here;
anzoo's grammar reproduced them for every width 1..7 and both split rules.
``tools/reference_values/aog_grammar.py`` makes them again from a clone of AOGNet-v2.
"""
from __future__ import annotations

import platform
import random

import pytest

from anzoo.models.backbones.aognet.configs import CONFIGS
from anzoo.models.backbones.aognet.grammar import (
    NodeType,
    build_aog,
    channel_bounds,
    cpython_set_order,
)

# id:type[start,end](children), children in the reference's order.
FINGERPRINTS = {
    (2, "shorter_left"): "0:O[0,1](1,2) 1:T[0,1] 2:A[0,1](3,4) 3:O[0,0](5) 4:O[1,1](6,3) 5:T[0,0] 6:T[1,1]",
    (2, "longer_left"): "0:O[0,1](1,2) 1:T[0,1] 2:A[0,1](3,4) 3:O[0,0](5) 4:O[1,1](6,3) 5:T[0,0] 6:T[1,1]",
    (4, "shorter_left"): (
        "0:O[0,3](1,2,3) 1:T[0,3] 2:A[0,3](4,5) 3:A[0,3](6,7,2) 4:O[0,0](8) 5:O[1,3](9,10) "
        "6:O[0,1](11,12) 7:O[2,3](13,14,6) 8:T[0,0] 9:T[1,3] 10:A[1,3](7,15) 11:T[0,1] "
        "12:A[0,1](4,15,14) 13:T[2,3] 14:A[2,3](16,17) 15:O[1,1](18,4) 16:O[2,2](19,15) "
        "17:O[3,3](20,16) 18:T[1,1] 19:T[2,2] 20:T[3,3]"),
    (4, "longer_left"): (
        "0:O[0,3](1,2,3) 1:T[0,3] 2:A[0,3](4,5,3) 3:A[0,3](6,7) 4:O[0,2](8,9) 5:O[3,3](10,15) "
        "6:O[0,1](11,12) 7:O[2,3](13,14,6) 8:T[0,2] 9:A[0,2](6,15) 10:T[3,3] 11:T[0,1] "
        "12:A[0,1](16,17,14) 13:T[2,3] 14:A[2,3](5,15) 15:O[2,2](18,17) 16:O[0,0](19) "
        "17:O[1,1](20,16) 18:T[2,2] 19:T[0,0] 20:T[1,1]"),
}
# The reference's DFS (post-order), i.e. its module registration and computation order.
ORDERS = {
    2: (1, 5, 3, 6, 4, 2, 0),
    (4, "shorter_left"): (1, 8, 4, 9, 13, 19, 18, 15, 16, 20, 17, 14, 11, 12, 6, 7, 10, 5, 2, 3, 0),
    (4, "longer_left"): (1, 8, 11, 19, 16, 20, 17, 10, 18, 15, 5, 14, 12, 6, 9, 4, 13, 7, 3, 2, 0),
}
# The reference's npaths of nodes 0..20.
NUM_PATHS = {
    (4, "shorter_left"): [1, 1, 1, 1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2],
    (4, "longer_left"): [1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 2, 2, 2],
}
# Node counts of the reference's graphs for widths 1..7 (both rules give the same counts).
NODE_COUNTS = {1: 2, 2: 7, 3: 12, 4: 21, 5: 30, 6: 43, 7: 56}


@pytest.mark.parametrize("key", sorted(FINGERPRINTS))
def test_numbering_and_child_order_match_reference(key):
    assert build_aog(*key).describe() == FINGERPRINTS[key]


@pytest.mark.parametrize("rule", ["shorter_left", "longer_left"])
def test_post_order_and_path_counts_match_reference(rule):
    assert build_aog(2, rule).order == ORDERS[2]
    g = build_aog(4, rule)
    assert g.order == ORDERS[(4, rule)]
    assert [n.num_paths for n in g.nodes] == NUM_PATHS[(4, rule)]


def test_set_order_is_not_id_order_from_five_primitives():
    # Up to 4 primitives the reference's set order equals ascending ids (still not always left
    # to right: node 10 above concatenates [2,3] before [1,1]); from 5 on it is neither.
    # Nodes of the reference's 5-primitive graphs:
    g = build_aog(5, "shorter_left")
    assert [g.nodes[i].describe() for i in (10, 13, 18)] == ["10:A[1,4](16,7)", "13:A[0,1](16,4,22)",
                                                             "18:O[3,4](24,23,17)"]
    g = build_aog(5, "longer_left")
    assert [g.nodes[i].describe() for i in (9, 15, 18)] == ["9:A[0,3](16,6,10)", "15:A[3,4](16,5)",
                                                            "18:O[2,3](24,23,17)"]


@pytest.mark.parametrize("width,expected", sorted(NODE_COUNTS.items()))
def test_node_counts_for_other_widths(width, expected):
    for rule in ("shorter_left", "longer_left"):
        assert len(build_aog(width, rule).nodes) == expected


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_node_types_per_stage_of_each_config(name):
    config = CONFIGS[name]
    counts = [tuple(build_aog(n, r).count(t) for t in (NodeType.TERMINAL, NodeType.AND, NodeType.OR))
              for n, r in zip(config.primitives, config.split_rules)]
    # (T, And, Or) for stages 1..4: 2 primitives, 2, 4, 4.
    assert counts == [(3, 1, 3), (3, 1, 3), (8, 5, 8), (8, 5, 8)]


@pytest.mark.parametrize("width", range(1, 8))
@pytest.mark.parametrize("rule", ["shorter_left", "longer_left"])
def test_graph_invariants(width, rule):
    g = build_aog(width, rule)
    root = g.nodes[g.root]
    assert (root.type, root.start, root.end, root.num_paths) == (NodeType.OR, 0, width - 1, 1)
    assert sorted(g.order) == list(range(len(g.nodes))) and g.order[-1] == g.root
    position = {i: p for p, i in enumerate(g.order)}
    for node in g.nodes:
        for c in node.children:
            assert position[c] < position[node.id]  # children are computed first
            assert node.id in g.nodes[c].parents
        laterals = g.lateral_children(node.id)
        assert len(laterals) <= 1
        assert all(g.nodes[c].width == node.width for c in laterals)
        assert node.children[len(node.children) - len(laterals):] == laterals  # laterals last
        parts = [g.nodes[c] for c in g.syntactic_children(node.id)]
        if node.type == NodeType.AND:
            # Two parts that tile the segment, in whatever order the reference's set gave.
            spans = sorted((p.start, p.end) for p in parts)
            assert spans == [(node.start, node.start + node.split - 1), (node.start + node.split, node.end)]
            assert all(p.type == NodeType.OR for p in parts)
        elif node.type == NodeType.OR:
            assert g.nodes[node.children[0]].type != NodeType.OR
            assert all((p.start, p.end) == (node.start, node.end) for p in parts)
            assert sum(p.type == NodeType.TERMINAL for p in parts) == 1
            splits = sorted(p.split for p in parts if p.type == NodeType.AND)
            w = node.width
            assert splits == [s for s in range(1, w) if (2 * s <= w if rule == "shorter_left" else 2 * s >= w)]
        else:
            assert node.children == []
        syntactic_parents = [p for p in node.parents if not g.is_lateral(p, node.id)]
        if node.id != g.root:
            assert node.num_paths == sum(g.nodes[p].num_paths for p in syntactic_parents)


def test_symmetric_split_rules_keep_mirrored_halves():
    assert [n.split for n in build_aog(4, "shorter_left").nodes if n.type == NodeType.AND and n.width == 4] == [1, 2]
    assert [n.split for n in build_aog(4, "longer_left").nodes if n.type == NodeType.AND and n.width == 4] == [3, 2]
    with pytest.raises(ValueError, match="split rule"):
        build_aog(4, "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1..7"):
        build_aog(8)


def test_set_order_examples():
    # Slot i % 8; 7 collides with 15 and probes to slot (5*7 + 1) % 8 = 4.
    assert cpython_set_order([15, 7]) == [7, 15]
    assert cpython_set_order([13, 14]) == [13, 14]
    assert cpython_set_order([9, 3, 1]) == [9, 3, 1]  # 1 collides with 9, probes to slot 6
    assert cpython_set_order([4, 4, 2]) == [2, 4]
    with pytest.raises(ValueError, match="at most 4"):
        cpython_set_order([1, 2, 3, 4, 5])


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="compares with CPython's set")
def test_set_order_matches_the_interpreter():
    rng = random.Random(0)
    for _ in range(20000):
        n = rng.randint(0, 4)
        ids = rng.sample(range(rng.choice([8, 24, 64, 1000])), n)
        ids += ids[: rng.randint(0, n)]
        assert cpython_set_order(ids) == list(set(ids)), ids


def test_channel_bounds():
    assert list(channel_bounds(512, 4)) == [0, 128, 256, 384, 512]
    with pytest.raises(ValueError, match="equal groups"):
        channel_bounds(30, 4)


def test_block_widths_follow_the_yaml_rounding():
    c12, c40 = CONFIGS["aognet12m-bn"], CONFIGS["aognet40m-bn"]
    assert [c12.block_channels(s) for s in range(4)] == [
        [(32, 80), (80, 128)], [(128, 192), (192, 256)], [(256, 384), (384, 512)], [(512, 824)]]
    # (896 - 448) / 3 = 149 rounds to 148, the nearest multiple of 4 primitives.
    assert c40.block_channels(2) == [(448, 596), (596, 744), (744, 896)]
    assert c40.block_channels(0) == [(56, 140), (140, 224)]
