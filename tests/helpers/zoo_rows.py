"""The table's 19 model ids, in its order (what the zoo must list)."""

EXPECTED_IDS = [
    "r50-bn", "r50-an", "r50-gn", "r50-sn", "r50-an-gn",
    "r101-bn", "r101-an", "r101-gn", "r101-an-gn",
    "aognet12m-bn", "aognet12m-an", "aognet12m-an-gn",
    "aognet40m-bn", "aognet40m-an", "aognet40m-an-gn",
    "cascade-r101-bn", "cascade-r101-an", "cascade-aognet40m-bn", "cascade-aognet40m-an",
]
