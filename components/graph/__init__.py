"""Graph learning pieces for the gcn_train flow: PyTorch-Direct style zero-copy feature loading on DGL.

OpenMP threads that spin while idle (libgomp's default) steal the cores from the sampling and
prefetch threads on a small shared machine: the conventional loader's compute ran 5-20x slower
with them. The entry points (`mlsys.environment.apply_environment_defaults`, also applied by the
benchmarks and the tests) set passive waiting before torch initialises OpenMP; importing this
package changes nothing.
"""
