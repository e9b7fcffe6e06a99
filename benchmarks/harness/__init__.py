"""The benchmark harness of ``unshared`` (beside the package, not in it): what is measured
(:mod:`.cases`), how (:mod:`.measure`), on which device and against which limits
(:mod:`.devices`), with which implementations (:mod:`.providers`), and the report
(:mod:`.report`). ``benchmarks/bench.py`` and ``benchmarks/gpu_check.py`` run it."""
