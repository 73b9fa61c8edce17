"""Developer benchmarks: speed, memory and scale measurements, apart from the library and the precompute steps."""


import os

# The entry points, not the library, choose the environment: this quietens TensorFlow's C++
# start-up notices unless the user chose a level (TF 2.21 still prints its oneDNN notice, which
# only TF_ENABLE_ONEDNN_OPTS=0 would silence). Set before any command imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
