"""`symnoise analyze`: why SymNoise helps, measured on trained runs (issue 21, item 3).

SymNoise is antithetic sampling of NEFTune's objective: the pair ``(x + e, x - e)`` has the same expected gradient
as one-sided noise, with the first-order term ``g.e`` cancelled in every sample. The modules:

* `estimators`: the estimators on callables (gradient variance per scheme, directional asymmetry and curvature,
  Hutchinson's Hessian trace) with seeded bootstrap intervals; usable on any loss of embeddings;
* `lm`: a causal LM's loss on fixed examples as a function of the noise on its input embeddings;
* `inputs`: the runs, checkpoints and data files, checked before a model loads;
* `analyze`: the measurements per run and split; `output`: ``analysis.json``, ``analysis.md`` and the plots.
"""
