"""inatsounds_jax: species classifiers on animal sounds in JAX/Flax."""

__version__ = "0.1.0"
