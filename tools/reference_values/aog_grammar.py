"""Regenerate the AOG grammar values frozen in ``tests/models/test_aognet_grammar.py`` from the
reference implementation: AOGNet-v2's ``models/aognet/AOG.py``.

The reference (research-only licence) is read from a clone, never copied into anzoo::

    git clone https://github.com/iVMCL/AOGNet-v2 $REF/AOGNet-v2      # checked at a95a869
    python tools/reference_values/aog_grammar.py --ref $REF/AOGNet-v2            # prints the values
    python tools/reference_values/aog_grammar.py --ref $REF/AOGNet-v2 --check    # compares with the test

Each graph is ``get_aog(grid_ht=1, grid_wd=N, max_split=2, use_node_lateral_connection=True,
remove_symmetric_children_of_or_node=1|2)`` (1: anzoo's "shorter_left", 2: "longer_left"), built
in a fresh interpreter as AOGNet-v2 builds one per stage. Printed: ``FINGERPRINTS`` (every
node as ``id:type[start,end](children)``, children in the reference's order), ``ORDERS`` (its
DFS post-order), ``NUM_PATHS`` (its npaths), ``NODE_COUNTS`` for widths 1..7, and the width-5
nodes the test quotes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import report  # noqa: E402

RULES = {"shorter_left": 1, "longer_left": 2}
TYPES = {"OrNode": "O", "AndNode": "A", "TerminalNode": "T"}
FIVE = {"shorter_left": (10, 13, 18), "longer_left": (9, 15, 18)}  # the width-5 nodes the test quotes


def one_graph(ref: Path, width: int, rule: str) -> dict:
    """The reference's graph, in this (fresh) process."""
    spec = importlib.util.spec_from_file_location("AOG", ref / "models" / "aognet" / "AOG.py")
    aog_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aog_module)
    aog = aog_module.get_aog(grid_ht=1, grid_wd=width, max_split=2, use_node_lateral_connection=True,
                             remove_symmetric_children_of_or_node=RULES[rule])
    nodes = []
    for node in aog.node_set:
        rect = aog.primitive_set[node.rect_idx]
        kids = f"({','.join(map(str, node.child_ids))})" if node.child_ids else ""
        nodes.append(f"{node.id}:{TYPES[node.node_type]}[{rect.x1},{rect.x2}]{kids}")
    return {"nodes": nodes, "order": [int(i) for i in aog.DFS],
            "npaths": [int(n.npaths) for n in aog.node_set]}


def graph(ref: Path, width: int, rule: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--ref", str(ref), "--one", str(width), rule],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return json.loads(out.stdout)


def values(ref: Path) -> dict:
    graphs = {(w, r): graph(ref, w, r) for w in range(1, 8) for r in RULES}
    counts = {w: {len(graphs[(w, r)]["nodes"]) for r in RULES} for w in range(1, 8)}
    assert all(len(c) == 1 for c in counts.values()), f"the rules give different node counts: {counts}"
    orders_2 = {tuple(graphs[(2, r)]["order"]) for r in RULES}
    assert len(orders_2) == 1, "width 2: the rules give different orders"
    return {
        "FINGERPRINTS": {(w, r): " ".join(graphs[(w, r)]["nodes"]) for w in (2, 4) for r in RULES},
        "ORDERS": {2: orders_2.pop(), **{(4, r): tuple(graphs[(4, r)]["order"]) for r in RULES}},
        "NUM_PATHS": {(4, r): graphs[(4, r)]["npaths"] for r in RULES},
        "NODE_COUNTS": {w: c.pop() for w, c in counts.items()},
        "FIVE": {r: [graphs[(5, r)]["nodes"][i] for i in FIVE[r]] for r in RULES},
    }


def print_values(v: dict) -> None:
    print("FINGERPRINTS = {")
    for key, text in v["FINGERPRINTS"].items():
        print(f"    {key!r}: {text!r},")
    print("}")
    print("ORDERS = {")
    for key, order in v["ORDERS"].items():
        print(f"    {key!r}: {order!r},")
    print("}")
    print("NUM_PATHS = {")
    for key, npaths in v["NUM_PATHS"].items():
        print(f"    {key!r}: {npaths!r},")
    print("}")
    print(f"NODE_COUNTS = {v['NODE_COUNTS']!r}")
    for rule, nodes in v["FIVE"].items():
        print(f"# build_aog(5, {rule!r}), nodes {FIVE[rule]}: {nodes!r}")


def check(v: dict) -> list[str]:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "models")]
    import test_aognet_grammar as t
    from anzoo.models.backbones.aognet.grammar import build_aog

    problems = [name for name in ("FINGERPRINTS", "ORDERS", "NUM_PATHS", "NODE_COUNTS")
                if getattr(t, name) != v[name]]
    for rule, nodes in v["FIVE"].items():  # quoted in test_set_order_is_not_id_order_from_five_primitives
        if [build_aog(5, rule).nodes[i].describe() for i in FIVE[rule]] != nodes:
            problems.append(f"width-5 nodes ({rule})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, default=Path(os.environ.get("REF", "/tmp/ref")) / "AOGNet-v2",
                        help="a clone of iVMCL/AOGNet-v2 (default $REF/AOGNet-v2)")
    parser.add_argument("--check", action="store_true", help="compare with the values the test stores")
    parser.add_argument("--one", nargs=2, metavar=("WIDTH", "RULE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_graph(args.ref, int(args.one[0]), args.one[1])))
        return
    v = values(args.ref)
    print_values(v)
    if args.check:
        report(check(v))


if __name__ == "__main__":
    main()
