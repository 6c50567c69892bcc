"""Jobs that drive whole runs: each loads a run directory, measures it (or trains from it) and
writes its result files. They sit above ``train`` and ``eval`` and below the command line:

- :mod:`~robustprune.jobs.audit`: the attack ladder and gradient-masking checks (``robustprune audit``);
- :mod:`~robustprune.jobs.curve`: robust accuracy vs ε (``robustprune curve``);
- :mod:`~robustprune.jobs.surface`: the loss surface around test points (``robustprune surface``);
- :mod:`~robustprune.jobs.sweep`: robustness vs weight sparsity over pruning rounds (``robustprune sweep-sparsity``);
- :mod:`~robustprune.jobs.compact`: a pruned run compacted into a smaller run directory (``robustprune compact``);
- :mod:`~robustprune.jobs.calibration`: reliability of runs and their test-time defenses (``robustprune calibration``).

Suites (:mod:`robustprune.compare`) are the same layer. Import the module of the job you need.
"""
