"""``python -m leakbench.weights CACHE_DIR KEY``: ship one pretrained entry of a cache."""

import sys

from leakbench.weights import ship

if len(sys.argv) != 3:
    sys.exit("usage: python -m leakbench.weights CACHE_DIR KEY")
print(ship(sys.argv[1], sys.argv[2]))
