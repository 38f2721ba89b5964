from setuptools import setup

setup(
    name="mlpfast",
    version="0.1.0",
    description="A fast, readable multilayer-perceptron engine: Numba, CUDA and C kernels "
                "checked against NumPy references",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["mlpfast", "mlpfast.backend", "mlpfast.benchmarks", "mlpfast.data", "mlpfast.kernels",
              "mlpfast.kernels.cuda"],
    package_dir={"mlpfast.kernels": "kernels"},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_cgemm.py:ffibuilder", "csrc/build_peak.py:ffibuilder"],
    install_requires=["numpy>=1.23", "numba>=0.58", "cffi>=1.15", "soundfile>=0.12"],
    extras_require={
        # Everything the test suite runs for real: matplotlib for the plots, numba-cuda for
        # the CUDA kernels under Numba's simulator, threadpoolctl for the benchmark header.
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "matplotlib>=3.5",
                 "numba-cuda>=0.30", "numpy<2.5", "threadpoolctl>=3", "scikit-learn>=1.1"],
        "plot": ["matplotlib>=3.5"],
        # PyTorch is not listed: a plain `pip install torch` pulls a multi-GB CUDA build.
        # Install its CPU build yourself (README, "Benchmarks") to compare against it.
        "compare": ["threadpoolctl>=3", "jax>=0.4"],
        # The CUDA target (kernels/cuda/, backend "cuda"): enough for the CUDA simulator the
        # tests use, and for a GPU machine with a CUDA toolkit installed. Without a toolkit,
        # take cuda12 / cuda13 (by the driver's CUDA version): they add NVIDIA's runtime wheels.
        # numpy<2.5: numba-cuda 0.30 registers np.row_stack, which NumPy 2.5 removed, and then
        # compiles no kernel (README, "GPU": why not numba-cuda-mlir).
        "cuda": ["numba-cuda>=0.30", "numpy<2.5"],
        "cuda12": ["numba-cuda[cu12]>=0.30", "numpy<2.5"],
        "cuda13": ["numba-cuda[cu13]>=0.30", "numpy<2.5"],
        "progress": ["tqdm>=4"],
        # examples/your_first_mlp.ipynb: what it imports (matplotlib, tqdm and ipywidgets for
        # its notebook progress bar) and what runs it headless (tests/test_notebook.py).
        "notebook": ["matplotlib>=3.5", "tqdm>=4", "ipywidgets>=7", "ipykernel>=6",
                     "nbclient>=0.6", "nbformat>=5"],
        # Data-parallel training over MPI (mlpfast.distributed, mpiexec -n N ... --distributed):
        # mpi4py's wheels load the MPI library of MPICH's wheel, so no system MPI is needed.
        "mpi": ["mpi4py>=4.0", "mpich>=4.2"],
    },
    entry_points={"console_scripts": ["mlpfast=mlpfast.cli:main"]},
    zip_safe=False,
)
