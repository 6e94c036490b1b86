"""Method-agnostic runtime shared by the verbs and the benchmark runner.

Never imports methods, train or verbs: it works on any detector object with
the Detector protocol (`eval_runs`, `run_facts`, `default_protocol`,
`domain`, `checkpoint_dir`).
"""
