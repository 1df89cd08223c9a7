"""Graph learning pieces for the gcn_train flow: PyTorch-Direct style zero-copy feature loading on DGL.

OpenMP threads that spin while idle (libgomp's default) steal the cores from the sampling and
prefetch threads on a small shared machine: the conventional loader's compute ran 5-20x slower
with them in measurements here. Passive waiting is set as a default (it only takes effect when this
package is imported before torch initialises OpenMP; the benchmark sets it for its own process).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
