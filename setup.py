from setuptools import setup

setup(
    name="mlpfast",
    version="0.1.0",
    description="A fast, readable multilayer-perceptron engine: Numba, CUDA and C kernels "
                "checked against NumPy references",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["mlpfast", "mlpfast.data", "mlpfast.kernels", "mlpfast.kernels.cuda"],
    package_dir={"mlpfast.kernels": "kernels"},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_cgemm.py:ffibuilder"],
    install_requires=["numpy>=1.23", "numba>=0.58", "cffi>=1.15", "soundfile>=0.12"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6"],
        "plot": ["matplotlib>=3.5"],
        "compare": ["threadpoolctl>=3", "torch", "jax[cpu]"],
        "cuda": ["numba-cuda"],
        "progress": ["tqdm>=4"],
    },
    entry_points={"console_scripts": ["mlpfast=mlpfast.cli:main"]},
    zip_safe=False,
)
