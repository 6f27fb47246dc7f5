"""Shared fixtures. Keras (the parity reference) runs on its JAX backend, without TensorFlow."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
