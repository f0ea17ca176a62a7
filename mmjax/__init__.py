"""mmjax: multimodal Transformers in JAX/Flax for research (image, text, audio)."""

__version__ = "0.1.0"
