"""Hand-written notes on surviving mutants, read by `benchmarks.mutation`.

EQUIVALENT: mutants that cannot change any outcome, with the reason; they do not count against
the score. NOTES: survivors that could matter, with why no test catches them yet. Keys are
mutmut's mutant names (`module.x_function__mutmut_N`); a name changes when its function is
edited, so review this file after a run that touched the function.
"""

EQUIVALENT: dict[str, str] = {}

NOTES: dict[str, str] = {}
