"""The benchmark harness (``mlpfast bench``) and the peers it races (a face, like the CLI).

    harness   what ``mlpfast bench`` runs: kernel, step and epoch rows, validated then timed
    peers     NumPy, PyTorch and JAX trainers, each run in a process of its own
"""
