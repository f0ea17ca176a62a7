"""mmjax: multimodal Transformers in JAX/Flax for research, with education as the flagship task."""

from setuptools import find_packages, setup

# Ranges are the ones tested: Python 3.11 resolves jax 0.10.x / flax 0.12.8 and
# Python 3.12 resolves jax 0.12.x / flax 0.12.12; both run the whole suite.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml-collections>=1.1,<1.2",
    "absl-py>=2.1,<3",
    "numpy>=1.26,<3",
    # Data: tfds builders written as array_record and read with grain; no TensorFlow.
    "tensorflow-datasets>=4.9.10,<4.10",
    "array-record>=0.8.6,<0.9",
    "grain>=0.2.18,<0.3",
    "importlib-resources>=6.0,<8",  # tfds imports it without declaring it
    "pillow>=10.0,<14",  # tfds image utilities; mmjax reads user images with it
    "scikit-learn>=1.4,<1.10",  # ships the real handwritten digits (load_digits)
    "easy-vqa>=1.0,<1.1",  # ships easy-VQA's images and questions (MIT): the easy_vqa builder
    # Text: WordPiece trained with `tokenizers`, loaded through `transformers`.
    "tokenizers>=0.22,<0.24",
    "transformers>=4.57,<6",  # 4.57 still has the Flax references the converter tests use
    "safetensors>=0.4,<1",  # mmjax.convert reads HF checkpoints (numpy backend, no torch)
    # `mmjax export` / `mmjax.serving`: jax.export serializes its artifacts with flatbuffers.
    "flatbuffers>=24.3,<26",
    # Logging.
    "tensorboardX>=2.6,<2.7",
    "tqdm>=4.66,<5",
]

EXTRAS = {
    "test": ["pytest>=8.0,<10", "matplotlib>=3.8,<3.12",
             # Flax BERT/ViT/CLIP references for mmjax.convert parity (gone in transformers 5).
             "transformers>=4.57,<4.58",
             # tests/test_notebooks.py runs notebooks/*.py headless in a Jupyter kernel.
             "jupytext>=1.16,<1.20", "nbclient>=0.10,<0.12", "ipykernel>=6.29,<8",
             # tests/test_tracking.py logs to W&B offline and reads the run file back.
             "wandb>=0.31,<0.32"],
    # config.wandb: W&B logging (mmjax/utils/writers.py). Tested with 0.31.0; 0.19.11 fails
    # to import beside protobuf 7.
    "wandb": ["wandb>=0.31,<0.32"],
    "notebooks": ["matplotlib>=3.8,<3.12", "jupytext>=1.16,<1.20", "nbclient>=0.10,<0.12",
                  "ipykernel>=6.29,<8"],
    # experiments/benchmark.py: the Hugging Face ViLT (PyTorch) peer. torch 2.4 is the first
    # with a fused AdamW on CPU; tested with torch 2.14.1 and transformers 4.57.6.
    "bench": ["torch>=2.4,<3", "transformers>=4.57,<6"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.13"],
    "tpu": ["jax[tpu]>=0.10.2,<0.13"],
}

setup(
    name="mmjax",
    version="0.1.0",
    description=("Multimodal Transformer research in JAX/Flax: towers, fusion, objectives, "
                 "education tasks."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["mmjax", "mmjax.*"]),
    include_package_data=False,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mmjax=mmjax.main:run"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
