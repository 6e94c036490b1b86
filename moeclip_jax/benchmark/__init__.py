"""`moeclip-jax benchmark`: suites of datasets -> resumable units -> tables.

  suite.py       suite files (configs/benchmarks/*.py) and their overrides
  plan.py        units (suite, target, class, shots, draw) and shards
  execute.py     runs units through the Detector protocol into the store
  store.py       one atomic JSON per finished unit (merge of shards)
  tables.py      aggregation rules, CSV / markdown / LaTeX
  references.py  reference numbers shipped in references/*.json
  charts.py      PNG bar charts, ours vs reference
  report.py      tables + charts from one or more stores
"""
