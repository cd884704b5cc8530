"""rap_jax: Relation Aware Panoptic segmentation in JAX/Flax."""
from setuptools import Extension, find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "pycocotools==2.0.11",
    "ml_collections==1.1.0",
    "numpy>=2.0,<3",
    "pillow>=10",
    "absl-py>=2.0",
    "tqdm>=4.60",
    "opencv-python-headless>=4.8",
    "matplotlib>=3.8",  # training curves (rap_jax/console.py)
    "pyspng==0.1.4",  # PQ's PNG decoder (rap_jax/metrics/pq_io.py; OpenCV / Pillow without it)
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3",
    "hotcoco==1.3.0",
    "torch==2.13.0",
    "pyyaml>=6",  # tests/test_configs.py reads the original's merged YAML dumps
]

setup(
    name="rap_jax",
    version="0.1.0",
    description="Relation Aware Panoptic segmentation (RAP) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["rap_jax", "rap_jax.*", "convert", "convert.*", "configs", "configs.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    # PQ's PNG un-filtering in C (rap_jax/metrics/pq_io.py). Optional: without a C compiler or
    # Python's headers the install goes on, and pq_io falls back to pyspng / OpenCV / Pillow.
    ext_modules=[Extension("rap_jax.metrics._png_unfilter", ["rap_jax/metrics/_png_unfilter.c"],
                           optional=True)],
)
